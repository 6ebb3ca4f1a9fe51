//! The OpenSSH backend: one `sshd -i` (inetd mode) per connection, with the connection on its
//! stdin/stdout, so no port is ever opened. sshd does authentication (the user's
//! `authorized_keys`), sessions, SFTP and forwarding.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use hubssh_wire::{PumpError, PumpOptions, Pumped};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// After sshd exits, how long the rest of its output may take to reach the client.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// How long sshd gets to exit once its connection is gone, and again after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// How the OpenSSH backend runs sshd.
#[derive(Debug, Clone)]
pub struct OpenSshConfig {
    /// The sshd binary (absolute).
    pub sshd: PathBuf,
    /// The host key file (0600).
    pub host_key: PathBuf,
    /// `AuthorizedKeysFile` value: absolute, or relative to the user's home.
    pub authorized_keys: String,
    /// The only user sshd lets in: the one hubsshd runs as.
    pub user: String,
    /// sshd's LoginGraceTime.
    pub login_grace: std::time::Duration,
    /// Extra `-o KEY=VALUE` options, after ours. sshd keeps the first value it sees for most
    /// keywords, so these cannot weaken the ones set here; the few lists it adds to instead are
    /// refused ([`ADDS_TO_OURS`]).
    pub extra_options: Vec<String>,
}

/// Keywords we set whose values sshd appends to rather than keeping the first: an
/// `--sshd-option` would widen ours (`AllowUsers=*` lets every account in).
const ADDS_TO_OURS: [&str; 2] = ["AllowUsers", "AcceptEnv"];

#[derive(Debug, thiserror::Error)]
pub enum OpenSshError {
    #[error("--sshd-option {0}: hubsshd sets {1} itself, and sshd would add this to it instead of keeping the first value")]
    Widens(String, &'static str),
    #[error("OpenSSH sshd not found (looked in PATH, /usr/sbin, /usr/local/sbin, /sbin): install openssh-server, pass --sshd PATH, or use --backend embedded")]
    NotFound,
    #[error("{} is not usable: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
}

/// The OpenSSH backend, checked and ready.
#[derive(Debug)]
pub struct OpenSsh {
    config: OpenSshConfig,
}

/// Finds `name` on PATH or in the usual system directories (sbin is often not on a user's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl OpenSsh {
    /// Checks that sshd accepts the configuration (`sshd -t`), so a broken install is an error
    /// at start rather than at the first connection.
    pub fn new(config: OpenSshConfig) -> Result<Self, OpenSshError> {
        check_extra(&config.extra_options)?;
        if !is_executable(&config.sshd) {
            return Err(OpenSshError::Unusable {
                path: config.sshd.clone(),
                reason: "not an executable file".into(),
            });
        }
        let backend = OpenSsh { config };
        let out = std::process::Command::new(&backend.config.sshd)
            .arg("-t")
            .args(backend.args())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| OpenSshError::Unusable {
                path: backend.config.sshd.clone(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            let mut reason = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if reason.contains("privilege separation directory") {
                reason.push_str(" (sshd run as root needs it: mkdir -p /run/sshd)");
            }
            return Err(OpenSshError::Unusable {
                path: backend.config.sshd.clone(),
                reason,
            });
        }
        Ok(backend)
    }

    /// sshd's arguments, without the mode flag (`-i` or `-t`).
    fn args(&self) -> Vec<String> {
        let c = &self.config;
        let mut args: Vec<String> = vec![
            "-e".into(),
            "-f".into(),
            "none".into(),
            "-h".into(),
            c.host_key.display().to_string(),
        ];
        let options = [
            format!("AuthorizedKeysFile={}", c.authorized_keys),
            format!("AllowUsers={}", c.user),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "PidFile=none".into(),
            "Subsystem=sftp internal-sftp".into(),
            "PrintMotd=no".into(),
            "AcceptEnv=LANG LC_* COLORTERM".into(),
        ];
        // After the admin's options: an --sshd-option LoginGraceTime of theirs still wins.
        let grace = format!("LoginGraceTime={}", c.login_grace.as_secs());
        let extra = c.extra_options.iter().cloned().chain([grace]);
        for o in options.into_iter().chain(extra) {
            args.push("-o".into());
            args.push(o);
        }
        args
    }

    /// Runs `sshd -i` for one connection and pumps bytes until the session ends.
    pub async fn serve<S>(
        &self,
        mut stream: S,
        keepalive: super::Keepalive,
        cancel: CancellationToken,
    ) -> io::Result<()>
    where
        S: AsyncBufRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (interval, max) = keepalive.interval_and_max();
        let mut sshd = Command::new(&self.config.sshd);
        sshd.arg("-i")
            .args(self.args())
            // After the admin's --sshd-option values, so those win (sshd keeps the first it sees).
            .arg("-o")
            .arg(format!("ClientAliveInterval={}", interval.as_secs()))
            .arg("-o")
            .arg(format!("ClientAliveCountMax={max}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at hubsshd's terminal is for hubsshd, which then
            // gives sessions their grace period, not for every sshd at once.
            .process_group(0)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os().filter(|(k, _)| crate::allocator::is_own_setting(k)) {
            sshd.env_remove(name);
        }
        let mut child = sshd.spawn()?;
        debug!(pid = child.id(), "sshd started");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("sshd started without its pipes"));
        };
        tokio::spawn(forward_log(stderr).in_current_span());
        hubssh_wire::pipes::grow(&stdout);

        let exited = {
            let (mut stdout, mut stdin) = (stdout, ClosingStdin(Some(stdin)));
            let pump =
                hubssh_wire::pump(&mut stream, &mut stdout, &mut stdin, PumpOptions::default());
            tokio::pin!(pump);
            tokio::select! {
                copied = &mut pump => {
                    log_pump(copied);
                    None
                }
                status = child.wait() => {
                    // sshd is gone; let what it wrote last reach the client, then close.
                    if let Ok(copied) = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pump).await {
                        log_pump(copied);
                    }
                    Some(status)
                }
                _ = cancel.cancelled() => None,
            }
            // Dropping the pump closes sshd's stdin: it sees EOF and ends the session.
        };
        let status = match exited {
            Some(status) => status?,
            None => {
                let ended = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = cancel.cancelled() => None,
                    _ = tokio::time::sleep(TERM_GRACE) => None,
                };
                match ended {
                    Some(status) => status?,
                    None => stop(&mut child).await?,
                }
            }
        };
        debug!(%status, "sshd exited");
        Ok(())
    }
}

/// Refuses extra options that sshd would add to one of ours rather than ignore.
fn check_extra(options: &[String]) -> Result<(), OpenSshError> {
    for option in options {
        let key = option
            .trim_start()
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or_default();
        if let Some(ours) = ADDS_TO_OURS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            return Err(OpenSshError::Widens(option.clone(), ours));
        }
    }
    Ok(())
}

/// Ends sshd: SIGTERM, then SIGKILL if it is still there after [`TERM_GRACE`].
async fn stop(child: &mut tokio::process::Child) -> io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(TERM_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            child.kill().await?;
            child.wait().await
        }
    }
}

fn log_pump(pumped: Result<Pumped, PumpError>) {
    match pumped {
        Ok(p) => debug!(
            bytes_in = p.from_tunnel,
            bytes_out = p.to_tunnel,
            "connection closed"
        ),
        Err(PumpError::Tunnel(e)) if e.kind() == io::ErrorKind::InvalidData => {
            warn!(%e, "connection ended")
        }
        Err(e) => debug!(%e, "connection ended"),
    }
}

/// sshd logs to stderr with `-e`; its lines become hubsshd log events. Read to the end
/// whatever comes (a line that is not UTF-8 included): sshd would block on a full pipe.
async fn forward_log(stderr: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stderr).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if line.contains("error") || line.contains("fatal") || line.contains("failed") {
            warn!(target: "hubsshd::sshd", "{line}");
        } else {
            info!(target: "hubsshd::sshd", "{line}");
        }
    }
}

/// sshd's stdin; shutting it down closes the pipe, so sshd sees EOF when the client goes away.
struct ClosingStdin(Option<ChildStdin>);

impl AsyncWrite for ClosingStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0 = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sshd_log_is_read_to_the_end_whatever_it_holds() {
        use tokio::io::AsyncWriteExt;
        let (mut sshd, stderr) = tokio::io::duplex(64);
        let reader = tokio::spawn(forward_log(stderr));
        let mut log = b"debug1: a line\n\xff\xfe not UTF-8\n".to_vec();
        log.extend(b"debug1: more\n".repeat(1000));
        let written = tokio::time::timeout(Duration::from_secs(5), sshd.write_all(&log)).await;
        // A reader that stops leaves sshd blocked on its stderr, or killed by SIGPIPE.
        assert!(
            matches!(written, Ok(Ok(()))),
            "the log reader stopped: {written:?}"
        );
        drop(sshd);
        reader.await.unwrap();
    }

    #[test]
    fn extra_options_may_not_add_to_our_lists() {
        let check = |o: &str| check_extra(&[o.to_owned()]);
        assert!(check("ClientAliveInterval=5").is_ok());
        assert!(check("DenyUsers=bob").is_ok());
        for widening in ["AllowUsers=*", "allowusers *", " AcceptEnv=LD_*"] {
            let err = check(widening).unwrap_err().to_string();
            assert!(err.contains("sets ") && err.contains(widening), "{err}");
        }
    }
}
