//! A running `hubsshd` for one test: started on a free loopback port or a unix socket, its log
//! collected, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::procs;

/// Where hubsshd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Tcp,
    Unix,
}

/// Which SSH server hubsshd runs behind the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    OpenSsh,
}

impl Backend {
    pub fn arg(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::OpenSsh => "openssh",
        }
    }
}

/// A hubsshd process.
pub struct Hubsshd {
    child: Child,
    /// `127.0.0.1:PORT`, or the unix socket path.
    pub addr: String,
    pub socket: Option<PathBuf>,
    log: Arc<Mutex<String>>,
}

impl Hubsshd {
    /// Starts hubsshd with its state in `dir` and `backend` letting in the keys of
    /// `authorized_keys`, plus `extra` arguments; waits for its `listening on` line.
    pub fn start(
        dir: &Path,
        backend: Backend,
        listen: Listen,
        authorized_keys: &Path,
        extra: &[&str],
    ) -> Hubsshd {
        let (cmd, socket) = Self::command(dir, backend, listen, authorized_keys, extra);
        Self::spawn(cmd, socket)
    }

    /// The command [`Hubsshd::start`] runs, and the unix socket it will listen on, to change
    /// before [`Hubsshd::spawn`]. hubsshd's allocator option is left for hubsshd to set.
    pub fn command(
        dir: &Path,
        backend: Backend,
        listen: Listen,
        authorized_keys: &Path,
        extra: &[&str],
    ) -> (Command, Option<PathBuf>) {
        let mut cmd = Command::new(crate::bin("hubsshd"));
        cmd.env_remove("MIMALLOC_ARENA_EAGER_COMMIT");
        cmd.arg("--state-dir").arg(dir.join("state"));
        cmd.arg("--authorized-keys").arg(authorized_keys);
        cmd.args(["--backend", backend.arg()]);
        if backend == Backend::Embedded && !extra.contains(&"--ssh-auth") {
            cmd.args(["--ssh-auth", "keys"]);
        }
        let socket = match listen {
            Listen::Tcp => {
                cmd.args(["--listen", "127.0.0.1:0"]);
                None
            }
            Listen::Unix => {
                let path = dir.join("hubsshd.sock");
                cmd.arg("--unix-socket").arg(&path);
                Some(path)
            }
        };
        cmd.args(extra).env("HUBSSHD_LOG", "hubsshd=debug,info");
        (cmd, socket)
    }

    /// Spawns a prepared hubsshd command and waits for it to listen.
    pub fn spawn(mut cmd: Command, socket: Option<PathBuf>) -> Hubsshd {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hubsshd");
        let (tx, rx) = mpsc::channel();
        let log = procs::collect_lines(child.stderr.take().expect("stderr"), move |line| {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("hubsshd did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        let addr = addr
            .strip_prefix("unix:")
            .map(str::to_owned)
            .unwrap_or(addr);
        Hubsshd {
            child,
            addr,
            socket,
            log,
        }
    }

    /// The tunnel URL on the TCP listener.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/user/test/sshd/", self.addr)
    }

    /// Waits until a client has logged in (either backend's log line), at most 20 s.
    pub fn wait_for_login(&self) {
        let seen = procs::wait_until(20, || self.logins() > 0);
        assert!(seen, "no login in the log:\n{}", self.log());
    }

    /// Logins so far, as either backend logs them (sshd's own line is passed on).
    pub fn logins(&self) -> usize {
        let log = self.log();
        log.matches("Accepted publickey").count() + log.matches("accepted public key").count()
    }

    /// Everything hubsshd has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test unless, within `secs`, hubsshd has no child process left (no sshd, shell or
    /// command). The failure message is `what`, then the processes left, then hubsshd's log.
    pub fn assert_nothing_left(&self, secs: u64, what: &str) {
        let clean = procs::wait_until(secs, || procs::children(self.pid()).is_empty());
        assert!(
            clean,
            "{what}: {:?}\n{}",
            procs::children(self.pid()),
            self.log()
        );
    }

    /// Sends `signal` to hubsshd.
    pub fn signal(&self, signal: i32) {
        // kill(1) rather than libc: the test library stays free of unsafe code.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for hubsshd to exit, at most `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let mut status = None;
        procs::wait_until(secs, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Hubsshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs hubsshd with `args` (state in `state_dir`), expecting a refusal to start: exit status 1
/// within seconds and a one-line reason, which is returned.
pub fn refused(state_dir: &Path, args: &[&str]) -> String {
    let out = procs::output(
        Command::new(crate::bin("hubsshd"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(args),
        20,
    );
    let err = out.stderr_text();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} must be refused: {err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: the reason must be one line: {err}"
    );
    err
}
