//! Commands and shells for session channels: on a pty (the user's login shell, or `shell -c
//! command` under `ssh -t`) or on pipes (`shell -c command`, stderr apart, stdin EOF passed on),
//! with their output sent to the channel and their exit reported as OpenSSH does.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelWriteHalf, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::inbox::Inbox;

/// Read size for a command's output: two OpenSSH client packets.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// After a pty shell exits, its output goes on to the client until the pty has had nothing to
/// read for this long: background jobs may hold the pty open, and like OpenSSH we do not wait
/// for them. Writing what was read may take as long as the client's link needs.
const PTY_DRAIN: Duration = Duration::from_millis(500);

/// The longest a session goes on after its pty shell exited (a background job writing to the
/// terminal without pause would otherwise keep it open).
const PTY_DRAIN_MAX: Duration = Duration::from_secs(30);

/// What the client asked for with `pty-req`.
#[derive(Debug, Clone)]
pub struct PtyParams {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
    /// The client's terminal modes, applied to the pty.
    pub modes: Vec<(russh::Pty, u32)>,
}

/// What to run on a session channel.
#[derive(Debug)]
pub struct Launch {
    pub shell: PathBuf,
    /// `None` runs a login shell.
    pub command: Option<OsString>,
    pub pty: Option<PtyParams>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
}

/// Requests for a running process.
#[derive(Debug)]
pub enum Control {
    Resize { cols: u16, rows: u16 },
    Signal(Sig),
}

/// Runs `launch` until it exits, feeding it `inbox` and sending its output and exit to the channel.
pub async fn run(
    launch: Launch,
    channel: ChannelWriteHalf<Msg>,
    inbox: Inbox,
    control: mpsc::UnboundedReceiver<Control>,
    handle: Handle,
) {
    let id = channel.id();
    let status = match &launch.pty {
        Some(_) => run_pty(launch, &channel, inbox, control).await,
        None => run_pipes(launch, &channel, inbox, control).await,
    };
    match status {
        Ok(status) => report_exit(id, &channel, &handle, status).await,
        Err(e) => {
            warn!(%e, "cannot start the command");
            let mut err = channel.make_writer_ext(Some(1));
            let _ = err
                .write_all(format!("hubsshd: cannot start the command: {e}\r\n").as_bytes())
                .await;
            let _ = channel.exit_status(127).await;
        }
    }
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// exit-status, or exit-signal for a command killed by a signal (OpenSSH reports both ways).
async fn report_exit(
    id: ChannelId,
    channel: &ChannelWriteHalf<Msg>,
    handle: &Handle,
    status: ExitStatus,
) {
    debug!(%status, "command exited");
    if let Some(code) = status.code() {
        let _ = channel.exit_status(code as u32).await;
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map(|s| s.as_str().trim_start_matches("SIG").to_owned());
        let sig = sig_from_name(&name.unwrap_or_else(|_| sig.to_string()));
        let _ = handle
            .exit_signal_request(id, sig, status.core_dumped(), String::new(), String::new())
            .await;
    }
}

fn sig_from_name(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => format!("SIG{name}").parse().ok()?,
    })
}

/// Delivers a client's `signal` request to the command's process group (like OpenSSH, which
/// signals the session's process group); unknown signals and exited commands are ignored.
fn signal_group(pgid: Option<Pid>, sig: &Sig) {
    if let (Some(pgid), Some(sig)) = (pgid, signal_of(sig)) {
        let _ = killpg(pgid, sig);
    }
}

/// The shell's arguments: `-c command`, or none for a login shell (whose argv0 starts with `-`).
fn shell_args(launch: &Launch) -> (OsString, Vec<OsString>) {
    let name = launch
        .shell
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "sh".into());
    match &launch.command {
        Some(cmd) => (name, vec!["-c".into(), cmd.clone()]),
        None => {
            let mut login = OsString::from("-");
            login.push(name);
            (login, Vec::new())
        }
    }
}

/// Carries out a control request for a command on pipes; false once the channel is gone.
fn obey(control: Option<Control>, pgid: Option<Pid>) -> bool {
    match control {
        Some(Control::Signal(sig)) => signal_group(pgid, &sig),
        Some(_) => {}
        None => return false,
    }
    true
}

async fn run_pipes(
    launch: Launch,
    channel: &ChannelWriteHalf<Msg>,
    inbox: Inbox,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> std::io::Result<ExitStatus> {
    let (argv0, args) = shell_args(&launch);
    let mut child = tokio::process::Command::new(&launch.shell)
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(launch.env)
        .current_dir(&launch.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("command started without its pipes"));
    };
    let feed = tokio::spawn(async move {
        if let Err(e) = inbox.pump(stdin).await {
            debug!(%e, "command stopped reading its stdin");
        }
    });
    let out = forward_output(stdout, channel.make_writer());
    let err = forward_output(stderr, channel.make_writer_ext(Some(1)));
    // The control sender goes when the channel does (closed by the client, or its connection
    // gone). Until then, signals; after that, nobody takes the output: its pipes are closed, so
    // the command gets SIGPIPE at its next write, as with sshd, instead of blocking on a window
    // that will never open.
    let mut connected = true;
    {
        let outputs = async { tokio::join!(out, err) };
        tokio::pin!(outputs);
        while connected {
            tokio::select! {
                _ = &mut outputs => break,
                c = control.recv() => connected = obey(c, pgid),
            }
        }
        if !connected {
            debug!("channel gone: closed the command's output");
        }
    }
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            c = control.recv(), if connected => connected = obey(c, pgid),
        }
    };
    feed.abort();
    status
}

async fn run_pty(
    launch: Launch,
    channel: &ChannelWriteHalf<Msg>,
    inbox: Inbox,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> std::io::Result<ExitStatus> {
    let params = launch.pty.clone().unwrap_or(PtyParams {
        term: "xterm".into(),
        cols: 80,
        rows: 24,
        modes: Vec::new(),
    });
    let (pty, pts) = pty_process::open().map_err(to_io)?;
    pty.resize(pty_process::Size::new(
        params.rows.max(1),
        params.cols.max(1),
    ))
    .map_err(to_io)?;
    if let Err(e) = super::tty_modes::apply(&pts, &params.modes) {
        debug!(%e, "cannot apply the client's terminal modes");
    }
    let tty = tty_name(&pts);
    let (argv0, args) = shell_args(&launch);
    let mut env = launch.env;
    env.push(("TERM".into(), params.term.clone().into()));
    if let Some(tty) = &tty {
        env.push(("SSH_TTY".into(), tty.into()));
    }
    let mut child = pty_process::Command::new(&launch.shell)
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(&launch.cwd)
        .spawn(pts)
        .map_err(to_io)?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let (reader, writer) = pty.into_split();

    // Ends when the channel does (closed by the client, or its connection gone): the handler
    // drops the control sender then. The client's EOF alone, like OpenSSH, leaves the shell be.
    // A write waits while the terminal's input queue is full (a paste into a program that does
    // not read): the channel's end and its signals are heard meanwhile, and a resize waits for
    // the write (it needs the terminal's writer).
    let mut input = tokio::spawn(async move {
        let (mut inbox, mut writer, mut eof) = (inbox, Some(writer), false);
        let mut resize = None;
        loop {
            if let (Some((cols, rows)), Some(w)) = (resize.take(), &writer) {
                let _ = w.resize(pty_process::Size::new(rows, cols));
            }
            let data = tokio::select! {
                data = inbox.recv(), if !eof => data,
                c = control.recv() => {
                    match c {
                        Some(c) => resize = control_pty(c, pgid).or(resize),
                        None => return,
                    }
                    continue;
                }
            };
            let Some(data) = data else {
                eof = true;
                continue;
            };
            let mut rest = &data[..];
            while let (false, Some(w)) = (rest.is_empty(), writer.as_mut()) {
                tokio::select! {
                    n = w.write(rest) => match n {
                        Ok(n) if n > 0 => rest = &rest[n..],
                        _ => writer = None,
                    },
                    c = control.recv() => match c {
                        Some(c) => resize = control_pty(c, pgid).or(resize),
                        None => return,
                    },
                }
            }
        }
    });
    let (draining, drain) = tokio::sync::watch::channel(false);
    let mut output = Box::pin(copy_output(reader, channel.make_writer(), Some(drain)));
    let status = tokio::select! {
        status = child.wait() => {
            let _ = draining.send(true);
            tokio::select! {
                _ = &mut output => {}
                _ = &mut input => {} // the channel is gone: nobody to write to
                _ = tokio::time::sleep(PTY_DRAIN_MAX) => debug!("stopped draining the terminal"),
            }
            status
        }
        _ = &mut output => child.wait().await,
        _ = &mut input => {
            // The channel is gone: closing the pty (both halves) hangs up the shell, SIGHUP to
            // it and its foreground job, as OpenSSH does.
            drop(output);
            debug!("terminal channel gone: hung up its shell");
            child.wait().await
        }
    };
    input.abort();
    status
}

/// Acts on a terminal request: a signal is sent at once; a resize, which needs the terminal's
/// writer, is returned (rows and columns at least 1) for its owner to apply.
fn control_pty(control: Control, pgid: Option<Pid>) -> Option<(u16, u16)> {
    match control {
        Control::Resize { cols, rows } => Some((cols.max(1), rows.max(1))),
        Control::Signal(sig) => {
            signal_group(pgid, &sig);
            None
        }
    }
}

/// Copies a command's output to the channel until EOF (a pty reports EIO once the shell is gone).
pub async fn forward_output<R, W>(from: R, to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    copy_output(from, to, None).await;
}

/// [`forward_output`]; once `drain` turns true, it also ends when a read has waited
/// [`PTY_DRAIN`] (bytes already read are always written).
async fn copy_output<R, W>(
    mut from: R,
    mut to: W,
    mut drain: Option<tokio::sync::watch::Receiver<bool>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        // A read is cancel-safe: one given up on has taken nothing.
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            () = quiet_while_draining(drain.as_mut()) => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.flush().await;
}

/// Resolves [`PTY_DRAIN`] after `drain` turns true; never without one.
async fn quiet_while_draining(drain: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    let on = match drain {
        Some(drain) => drain.wait_for(|on| *on).await.is_ok(),
        None => false,
    };
    if on {
        tokio::time::sleep(PTY_DRAIN).await;
    } else {
        std::future::pending::<()>().await;
    }
}

fn tty_name(pts: &pty_process::Pts) -> Option<String> {
    use std::os::fd::AsFd;
    nix::unistd::ttyname(pts.as_fd())
        .ok()
        .map(|p| p.display().to_string())
}

fn to_io(e: pty_process::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_draining_terminal_writes_all_it_read_then_stops_when_quiet() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The pty: 10 KiB of output, and a background job keeping it open.
        let (mut pty, from) = tokio::io::duplex(64 * 1024);
        pty.write_all(&[b'x'; 10 * 1024]).await.unwrap();
        // The channel: a client that takes nothing for 1.5 s (its window is shut).
        let (to, mut client) = tokio::io::duplex(1024);
        let (draining, drain) = tokio::sync::watch::channel(true);
        let copy = tokio::spawn(copy_output(from, to, Some(drain)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got));
        read.await
            .expect("the drain ends once the pty is quiet")
            .unwrap();
        assert_eq!(
            got.len(),
            10 * 1024,
            "all of what was read reaches the client"
        );
        copy.await.unwrap();
        drop((pty, draining));
    }

    #[test]
    fn signal_names_round_trip() {
        for name in ["INT", "TERM", "HUP", "KILL", "USR2", "WINCH"] {
            let sig = sig_from_name(name);
            let back = signal_of(&sig).unwrap();
            assert_eq!(back.as_str(), format!("SIG{name}"));
        }
    }

    #[test]
    fn login_shell_argv0_starts_with_a_dash() {
        let mut launch = Launch {
            shell: "/bin/bash".into(),
            command: None,
            pty: None,
            env: Vec::new(),
            cwd: "/".into(),
        };
        assert_eq!(shell_args(&launch), ("-bash".into(), vec![]));
        launch.command = Some("ls".into());
        assert_eq!(
            shell_args(&launch),
            ("bash".into(), vec!["-c".into(), "ls".into()])
        );
    }
}
