//! `hubsshd`: parses the command line, prepares the backend and runs the server.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hubsshd::backend::embedded::{Embedded, SshAuth, UserInfo};
use hubsshd::backend::openssh::{find_program, OpenSsh, OpenSshConfig, OpenSshError};
use hubsshd::hub_auth::HubAuth;
use hubsshd::{state, Auth, Backend, Listener, Server};
use tokio_util::sync::CancellationToken;

/// Serve SSH over a WebSocket tunnel (behind jupyter-server-proxy or standalone).
#[derive(Parser, Debug)]
#[command(name = "hubsshd", version)]
struct Args {
    /// Listen on this TCP address (port 0 picks a free port).
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "unix_socket",
        required_unless_present = "unix_socket"
    )]
    listen: Option<SocketAddr>,
    /// Listen on this unix socket (created 0600, removed on exit).
    #[arg(long, value_name = "PATH")]
    unix_socket: Option<PathBuf>,
    /// SSH server behind the tunnel: built in, or OpenSSH's sshd.
    #[arg(long, value_enum, default_value_t = BackendArg::Embedded)]
    backend: BackendArg,
    /// How WebSocket clients are authenticated: `hub` (a hub API token with access to this
    /// server) or `none` (loopback and unix sockets only).
    #[arg(long, value_enum, default_value_t = AuthArg::None)]
    auth: AuthArg,
    /// The hub API that checks tokens for `--auth hub`.
    #[arg(long, value_name = "URL", env = "JUPYTERHUB_API_URL")]
    hub_api_url: Option<String>,
    /// The hub user who owns this server, for `--auth hub`.
    #[arg(long, value_name = "NAME", env = "JUPYTERHUB_USER")]
    hub_user: Option<String>,
    /// The server's name (empty for the user's default server), for `--auth hub`.
    #[arg(
        long,
        value_name = "NAME",
        env = "JUPYTERHUB_SERVER_NAME",
        default_value = ""
    )]
    hub_server_name: String,
    /// How SSH clients are authenticated (embedded backend) [default: tunnel on a unix socket, keys otherwise].
    #[arg(long, value_enum)]
    ssh_auth: Option<SshAuthArg>,
    /// Allow `--ssh-auth tunnel` when running as root (containers whose only user is root).
    #[arg(long)]
    allow_root_tunnel: bool,
    /// Where the host key is kept [default: ~/.local/share/hubssh].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// authorized_keys file (absolute, or relative to home).
    #[arg(long, value_name = "PATH", default_value = ".ssh/authorized_keys")]
    authorized_keys: String,
    /// The OpenSSH sshd binary [default: found on PATH or in /usr/sbin].
    #[arg(long, value_name = "PATH")]
    sshd: Option<PathBuf>,
    /// Extra sshd option for the openssh backend, as KEY=VALUE (repeatable).
    #[arg(long = "sshd-option", value_name = "KEY=VALUE")]
    sshd_options: Vec<String>,
    /// Seconds a client has from connecting to logging in, as sshd's LoginGraceTime (both
    /// backends).
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    login_grace: u64,
    /// Seconds live sessions may go on after SIGINT/SIGTERM/SIGHUP.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    shutdown_grace: u64,
    /// CPU scheduling policy for hubsshd and the sessions it starts. `batch` keeps a relay that
    /// shares one CPU with sshd from being woken for every packet (bulk transfers up to 5x
    /// faster there), at the cost of milliseconds per round trip while another program keeps
    /// that CPU busy (see docs/deploy.md).
    #[arg(long, value_enum, env = "HUBSSHD_SCHED", default_value_t = SchedArg::Normal)]
    sched: SchedArg,
    /// Log debug detail.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SchedArg {
    Batch,
    Normal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Embedded,
    Openssh,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AuthArg {
    None,
    Hub,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SshAuthArg {
    Tunnel,
    Keys,
}

/// Every byte a client sends passes through buffers allocated on the connection's task and freed
/// on the consumer's. glibc's malloc keeps handing that memory back to the kernel and faulting it
/// in again: 10% of hubsshd's time in a 1 GiB upload went to page faults. mimalloc reuses it.
/// Its one setting is in [`hubsshd::allocator`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // First, while hubsshd has no other thread.
    hubsshd::allocator::settle();
    let args = Args::parse();
    init_tracing(args.verbose);
    if args.sched == SchedArg::Batch {
        // Before the runtime: its threads, and every process hubsshd starts, inherit the policy.
        if let Err(e) = batch_scheduling() {
            tracing::warn!(%e, "cannot use SCHED_BATCH; keeping the normal scheduling policy");
        }
    }
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    if let Err(e) = outcome {
        let _ = writeln!(std::io::stderr(), "hubsshd: {e:#}");
        std::process::exit(1);
    }
}

/// Puts the calling thread under SCHED_BATCH, at its nice value: no wakeup preemption, so a relay
/// that shares a CPU with the SSH server behind it moves a burst per switch instead of a packet.
/// Not the default: it costs round-trip latency when another program keeps that CPU busy.
/// docs/deploy.md has the figures.
#[cfg(target_os = "linux")]
fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it; pid 0
    // is the calling thread. Nothing else is touched.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_scheduling() -> std::io::Result<()> {
    Err(std::io::Error::other("SCHED_BATCH is Linux's"))
}

fn init_tracing(verbose: bool) {
    let default = if verbose {
        "hubsshd=debug,info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUBSSHD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A line that cannot be written (the log's reader is gone) is dropped: tracing's fallback
    // would report it with eprintln!, whose panic ends the task that logged (a session, the
    // shutdown on SIGTERM).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
}

async fn run(args: Args) -> Result<()> {
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => state::default_dir()?,
    };
    let user = UserInfo::current().context("cannot find this user's passwd entry")?;
    let (host_key_path, host_key) = state::ensure_host_key(&state_dir)?;
    let backend = match args.backend {
        BackendArg::Embedded => {
            let default = if args.unix_socket.is_some() {
                SshAuthArg::Tunnel
            } else {
                SshAuthArg::Keys
            };
            let auth = match args.ssh_auth.unwrap_or(default) {
                SshAuthArg::Tunnel if user.is_root() && !args.allow_root_tunnel => bail!(
                    "refusing --ssh-auth tunnel as root: anyone reaching the tunnel would be root without a key. Use --ssh-auth keys (or --allow-root-tunnel where root is the only user)"
                ),
                SshAuthArg::Tunnel => SshAuth::Tunnel,
                SshAuthArg::Keys => SshAuth::Keys {
                    file: user.home.join(&args.authorized_keys),
                    home: user.home.clone(),
                },
            };
            Backend::Embedded(Embedded::new(
                host_key,
                auth,
                user,
                Duration::from_secs(args.login_grace),
            ))
        }
        BackendArg::Openssh => {
            let sshd = match args.sshd {
                Some(p) => p,
                None => find_program("sshd").ok_or(OpenSshError::NotFound)?,
            };
            Backend::OpenSsh(OpenSsh::new(OpenSshConfig {
                sshd,
                host_key: host_key_path,
                authorized_keys: args.authorized_keys,
                user: user.name,
                login_grace: Duration::from_secs(args.login_grace),
                extra_options: args.sshd_options,
            })?)
        }
    };
    let auth = match args.auth {
        AuthArg::None => Auth::None,
        AuthArg::Hub => {
            let (Some(api), Some(user)) = (args.hub_api_url, args.hub_user) else {
                bail!("--auth hub needs the hub API URL and the server's owner: --hub-api-url and --hub-user, or JUPYTERHUB_API_URL and JUPYTERHUB_USER as JupyterHub sets them")
            };
            let hub = HubAuth::new(&api, user, args.hub_server_name)?;
            tracing::info!(server = %hub.describe(), "hub token auth");
            Auth::Hub(Arc::new(hub))
        }
    };
    // Installed before the bind: from the moment the socket exists, a signal means a clean
    // shutdown (the socket file removed), never the default instant death.
    let signals = Signals::install();
    let listener = match (&args.listen, &args.unix_socket) {
        (Some(addr), _) => Listener::bind_tcp(*addr).await?,
        (None, Some(path)) => Listener::bind_unix(path)?,
        (None, None) => bail!("pass --listen ADDR or --unix-socket PATH"),
    };
    let server = Server {
        backend,
        auth,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    hubsshd::check_exposure(&listener, &server)?;
    // Written even if nobody reads stderr any more (then ignored, as every log line is).
    let _ = writeln!(
        std::io::stderr(),
        "hubsshd: listening on {} (backend: {})",
        listener.describe(),
        server.backend.name()
    );
    let shutdown = CancellationToken::new();
    if let Some(signals) = signals {
        tokio::spawn(signals.on_signal(shutdown.clone()));
    }
    hubsshd::serve(listener, server, shutdown).await?;
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP (the terminal of a standalone hubsshd closed) shut hubsshd down,
/// SIGHUP only when hubsshd was not started ignoring it (`nohup`).
///
/// A signal hubsshd was started ignoring (SIGHUP under `nohup`, SIGQUIT for a `cmd &` of a
/// script) is caught too and dropped: an ignored signal stays ignored across exec, so the shells
/// of sessions would inherit it and a closed terminal could not hang up its job. A caught one
/// is reset to its default in every program hubsshd starts.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// SIGHUP was ignored at start: received ones are dropped.
    hup_ignored: bool,
    /// Caught only to keep it from being inherited as ignored; never acted on.
    _quit: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let ignored = ignored_at_start();
        let is_ignored = |sig: nix::libc::c_int| ignored & (1 << (sig - 1)) != 0;
        let caught = (|| {
            Ok::<_, std::io::Error>(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                hup_ignored: is_ignored(nix::libc::SIGHUP),
                _quit: if is_ignored(nix::libc::SIGQUIT) {
                    Some(signal(SignalKind::quit())?)
                } else {
                    None
                },
            })
        })();
        match caught {
            Ok(signals) => Some(signals),
            Err(e) => {
                tracing::warn!(%e, "cannot install signal handlers");
                None
            }
        }
    }

    /// Cancels `shutdown` at the first signal. A second one ends hubsshd at once, status 1:
    /// the sessions still in their grace period are cut (sshd children see their pipes close).
    ///
    /// A hangup counts once: a closing terminal may send two (to the job, and from the shell).
    async fn on_signal(mut self, shutdown: CancellationToken) {
        let mut received = 0;
        loop {
            let hangup = tokio::select! {
                _ = self.int.recv() => false,
                _ = self.term.recv() => false,
                Some(()) = self.hup.recv() => true,
            };
            if hangup && self.hup_ignored {
                tracing::debug!("hangup ignored (hubsshd was started ignoring it)");
                continue;
            }
            if hangup && received > 0 {
                continue;
            }
            received += 1;
            if received == 1 {
                tracing::info!("signal received: shutting down");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
        }
    }
}

/// The signals set to be ignored when hubsshd started (`nohup`, `cmd &` in a script, or a
/// supervisor that asks for it), as a mask (bit `n - 1` for signal `n`). Read from /proc
/// (Linux); elsewhere taken as none.
fn ignored_at_start() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0)
}
