//! `hubssh`: parses the command line and runs the chosen command.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hubssh::bridge::BridgeOptions;
use hubssh::commands::{self, AddHost, Net};
use hubssh::doctor;
use hubssh::proxy::{self, ProxyConfig};

/// SSH into your JupyterHub server over HTTPS.
#[derive(Parser, Debug)]
#[command(name = "hubssh", version)]
struct Cli {
    /// Log debug detail to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the hub: TLS and proxy options shared by every command.
#[derive(Args, Debug, Clone, Default)]
struct NetArgs {
    /// Also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Do not check the hub's TLS certificate (prints a warning). Prefer --cacert.
    #[arg(long)]
    insecure: bool,
    /// HTTP proxy, http://[USER:PASS@]HOST:PORT [default: $HTTPS_PROXY, $ALL_PROXY (for ws://:
    /// $HTTP_PROXY), minus $NO_PROXY].
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
}

impl From<NetArgs> for Net {
    fn from(a: NetArgs) -> Net {
        Net {
            cacert: a.cacert,
            insecure: a.insecure,
            proxy: a.proxy,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bridge stdin/stdout to a server's sshd endpoint (use as ssh's ProxyCommand).
    Proxy {
        /// A host added with `hubssh config add`, or an endpoint URL such as
        /// https://hub.example.org/user/NAME/sshd/
        target: String,
        /// Read the hub API token from this file [default: $HUBSSH_TOKEN, $JUPYTERHUB_API_TOKEN
        /// (for its own hub only), then the token saved by `hubssh login`].
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Start the server if it is not running, showing the hub's progress.
        #[arg(long)]
        start: bool,
        #[command(flatten)]
        net: NetArgs,
        /// Seconds between WebSocket pings (0: none). Three missed pings end the connection.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        ping_interval: u64,
    },
    /// Check a token with the hub and save it (prompted without echo, or read from stdin).
    Login {
        /// The hub, e.g. https://hub.example.org
        hub: String,
        /// Read the token from this file instead.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Check each hop to a server's SSH (DNS, TCP or proxy, TLS, token, server, endpoint, SSH)
    /// and say what to do about the first that fails. Exit status 0 when all pass.
    Doctor {
        /// A host added with `hubssh config add`, or an endpoint URL.
        target: String,
        /// Read the hub API token from this file.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Forget the token saved for a hub.
    Logout { hub: String },
    /// Manage the hubssh hosts in your ssh config.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Add (or update) `Host NAME` in the managed block of the ssh config.
    Add {
        name: String,
        /// The hub, e.g. https://hub.example.org
        #[arg(long)]
        hub: String,
        /// The hub user whose server to reach [default: the user you logged in as].
        #[arg(long)]
        user: Option<String>,
        /// A named server [default: the user's default server].
        #[arg(long, default_value = "")]
        server: String,
        /// Start the server when it is not running.
        #[arg(long)]
        start: bool,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Remove `Host NAME` from the managed block.
    Remove {
        name: String,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// List the hosts hubssh manages.
    List,
}

#[derive(Args, Debug)]
struct ConfigFile {
    /// The ssh config file to edit [default: ~/.ssh/config].
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// Print what would change instead of writing it.
    #[arg(long)]
    dry_run: bool,
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start: {e}")),
    };
    let result = match cli.command {
        Command::Proxy {
            target,
            token_file,
            start,
            net,
            ping_interval,
        } => {
            let config = ProxyConfig {
                target,
                token_file,
                net: net.into(),
                start,
                bridge: BridgeOptions {
                    ping_interval: (ping_interval > 0).then(|| Duration::from_secs(ping_interval)),
                    ..BridgeOptions::default()
                },
            };
            match runtime.block_on(proxy::run(config)) {
                Ok(end) => {
                    tracing::debug!(?end, "tunnel closed");
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        }
        Command::Login {
            hub,
            token_file,
            net,
        } => commands::read_token(token_file.as_deref(), &hub)
            .and_then(|token| runtime.block_on(commands::login(&hub, token, &net.into()))),
        Command::Logout { hub } => commands::logout(&hub),
        Command::Doctor {
            target,
            token_file,
            net,
        } => match proxy::resolve(&target, token_file.as_deref()) {
            Ok(r) => match runtime.block_on(doctor::run(&r.url, r.token, &net.into())) {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => Err(e),
            },
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        Command::Config { action } => match action {
            ConfigAction::Add {
                name,
                hub,
                user,
                server,
                start,
                file,
            } => commands::ssh_config_path(file.ssh_config.as_deref()).and_then(|path| {
                let add = AddHost {
                    name,
                    hub,
                    user,
                    server,
                    start,
                };
                commands::config_add(add, &path, file.dry_run)
            }),
            ConfigAction::Remove { name, file } => {
                commands::ssh_config_path(file.ssh_config.as_deref())
                    .and_then(|path| commands::config_remove(&name, &path, file.dry_run))
            }
            ConfigAction::List => commands::config_list(),
        },
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// Prints `hubssh: <message>` on stderr and exits 1. stdout is never written: it is ssh's.
fn fail(message: &str) -> ! {
    // Even with nobody reading stderr, the exit status tells: no panic over the message.
    let _ = writeln!(std::io::stderr(), "hubssh: {message}");
    std::process::exit(1)
}

fn init_tracing(verbose: bool) {
    let default = if verbose {
        "hubssh=debug"
    } else {
        "hubssh=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUBSSH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A line that cannot be written is dropped (tracing's fallback would panic).
        .log_internal_errors(false)
        .init();
}
