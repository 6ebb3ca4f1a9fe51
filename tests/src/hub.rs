//! A real JupyterHub for the end-to-end tests: PyPI `jupyterhub`, `jupyter-server`,
//! `jupyter-server-proxy` and the built `jupyter-hubssh` wheel in a venv (`scripts/hub-venv` makes
//! it; `$HUBSSH_TEST_VENV`, default `/opt/hubssh-ci/venv`), `configurable-http-proxy` from npm,
//! on loopback ports, with local system users and LocalProcessSpawner.
//!
//! One hub per test binary, started on first use and stopped when the test process exits (the
//! hub gets SIGTERM as its parent thread dies and stops the servers and the proxy it started).
//! The tests talk to the REST API as an admin service; its token sits in a header file, never on
//! a command line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::procs;

/// The test venv, made by `scripts/hub-venv`.
pub fn venv() -> PathBuf {
    std::env::var_os("HUBSSH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hubssh-ci/venv"))
}

/// The benchmark's baseline venv (jupyter-sshd-proxy), made by `scripts/hub-venv --baseline`.
pub fn baseline_venv() -> PathBuf {
    std::env::var_os("HUBSSH_TEST_BASELINE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hubssh-ci/baseline-venv"))
}

/// The running hub.
pub struct Hub {
    /// The hub's state: database, logs, config for the server without the endpoint. 0755, so the
    /// users' servers can read what they need; secrets in it are 0600.
    pub dir: tempfile::TempDir,
    /// The public port (configurable-http-proxy).
    pub port: u16,
    /// The hub's own API port (what single-user servers call `JUPYTERHUB_API_URL`).
    pub api_port: u16,
    admin_header: PathBuf,
}

/// The hub shared by the tests of this binary.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::start)
}

impl Hub {
    fn start() -> Hub {
        let venv = venv();
        for program in ["jupyterhub", "jupyterhub-singleuser", "hubsshd"] {
            assert!(
                venv.join("bin").join(program).exists(),
                "{} has no {program}: run scripts/hub-venv (or set HUBSSH_TEST_VENV)",
                venv.display()
            );
        }
        assert!(
            crate::which("configurable-http-proxy").is_some(),
            "configurable-http-proxy is not on PATH: npm install -g configurable-http-proxy"
        );
        let dir = tempfile::Builder::new()
            .prefix("hubssh-hub-")
            .tempdir()
            .expect("hub dir");
        set_mode(dir.path(), 0o755);
        let plain = dir.path().join("plain-config");
        std::fs::create_dir(&plain).expect("plain-config");
        std::fs::write(
            plain.join("jupyter_server_config.json"),
            r#"{"ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": false}}}"#,
        )
        .expect("plain config");
        set_mode(&plain, 0o755);
        set_mode(&plain.join("jupyter_server_config.json"), 0o644);

        let admin_token = random_hex();
        let admin_header = dir.path().join("admin.header");
        write_private(
            &admin_header,
            &format!("Authorization: token {admin_token}"),
        );
        let (port, api_port, chp_port) =
            (procs::free_port(), procs::free_port(), procs::free_port());
        let log = std::fs::File::create(dir.path().join("hub.log")).expect("hub.log");
        let mut cmd = Command::new(venv.join("bin/jupyterhub"));
        cmd.arg("-f")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/jupyterhub_config.py"
            ))
            .current_dir(dir.path())
            .env("HUBSSH_TEST_HUB_DIR", dir.path())
            .env("HUBSSH_TEST_VENV", &venv)
            .env("HUBSSH_TEST_HUB_PORT", port.to_string())
            .env("HUBSSH_TEST_HUB_API_PORT", api_port.to_string())
            .env("HUBSSH_TEST_CHP_API_PORT", chp_port.to_string())
            .env("HUBSSH_TEST_CHP_TOKEN", random_hex())
            .env("HUBSSH_TEST_ADMIN_TOKEN", &admin_token)
            .env("HUBSSH_TEST_BASELINE_VENV", baseline_venv())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        spawn_for_life_of_process(cmd);
        let hub = Hub {
            dir,
            port,
            api_port,
            admin_header,
        };
        let up = procs::wait_until(90, || hub.api("GET", "/", None).0 == 200);
        assert!(
            up,
            "JupyterHub did not come up; its log:\n{}",
            hub.log_tail()
        );
        hub
    }

    /// The public URL (through configurable-http-proxy), e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The hub API as single-user servers reach it (not through the proxy).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/hub/api", self.api_port)
    }

    /// The tunnel URL of `user`'s default server.
    pub fn sshd_url(&self, user: &str) -> String {
        format!("{}/user/{user}/sshd/", self.url())
    }

    /// The last lines of the hub's log (which includes the single-user servers' and hubsshd's).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A REST call as the admin service: `(status, JSON body or Null)`.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        api_call(&self.admin_header, &self.url(), method, path, body)
    }

    /// Makes sure the local system user and the hub user `name` exist.
    pub fn user(&self, name: &str) {
        ensure_system_user(name);
        let (status, body) = self.api("POST", &format!("/users/{name}"), None);
        assert!(
            status == 201 || status == 409,
            "creating hub user {name}: HTTP {status} {body}"
        );
    }

    /// Starts `name`'s default server and waits until the hub says it is ready.
    pub fn start_server(&self, name: &str) {
        self.start_named_server(name, "");
    }

    /// Starts `name`'s server `server` (empty: the default one) and waits until it is ready.
    pub fn start_named_server(&self, name: &str, server: &str) {
        self.user(name);
        let path = if server.is_empty() {
            format!("/users/{name}/server")
        } else {
            format!("/users/{name}/servers/{server}")
        };
        let (status, body) = self.api("POST", &path, None);
        assert!(
            matches!(status, 201 | 202 | 400),
            "starting {name}'s server {server:?}: HTTP {status} {body}\n{}",
            self.log_tail()
        );
        let ready = procs::wait_until(90, || {
            let (_, user) = self.api("GET", &format!("/users/{name}"), None);
            user["servers"][server]["ready"] == Value::Bool(true)
        });
        assert!(
            ready,
            "{name}'s server {server:?} never got ready:\n{}",
            self.log_tail()
        );
    }

    /// Stops `name`'s default server and waits until it is gone.
    pub fn stop_server(&self, name: &str) {
        let (status, body) = self.api("DELETE", &format!("/users/{name}/server"), None);
        assert!(
            matches!(status, 202 | 204 | 400),
            "stopping {name}'s server: HTTP {status} {body}"
        );
        let gone = procs::wait_until(60, || self.server(name).is_null());
        assert!(gone, "{name}'s server did not stop:\n{}", self.log_tail());
    }

    /// The hub's model of `name`'s default server (`Null` when it is not running).
    pub fn server(&self, name: &str) -> Value {
        let (_, user) = self.api("GET", &format!("/users/{name}"), None);
        user["servers"][""].clone()
    }

    /// A new API token for `name` (with `scopes`, or the user's own by default), written to a
    /// 0600 file in `dir`. Returns the file and the token's id.
    pub fn token(&self, name: &str, scopes: Option<&[&str]>, dir: &Path) -> (PathBuf, String) {
        let body = match scopes {
            Some(s) => serde_json::json!({"note": "hubssh test", "scopes": s}),
            None => serde_json::json!({"note": "hubssh test"}),
        };
        let (status, answer) = self.api(
            "POST",
            &format!("/users/{name}/tokens"),
            Some(&body.to_string()),
        );
        assert_eq!(status, 201, "token for {name}: {answer}");
        let file = dir.join(format!("token-{}", answer["id"].as_str().unwrap_or("x")));
        write_private(&file, answer["token"].as_str().expect("token"));
        (file, answer["id"].as_str().expect("id").to_owned())
    }

    /// Revokes `name`'s token `id`.
    pub fn revoke(&self, name: &str, id: &str) {
        let (status, body) = self.api("DELETE", &format!("/users/{name}/tokens/{id}"), None);
        assert_eq!(status, 204, "revoking token {id}: {body}");
    }
}

fn api_call(
    header: &Path,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("-H")
        .arg(format!("@{}", header.display()))
        .arg(format!("{base}/hub/api{path}"));
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = procs::output(&mut cmd, 30);
    let text = out.stdout_text();
    let (json, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let status = status.trim().parse().unwrap_or(0);
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Runs `cmd` from a thread that lives as long as the test process, with SIGTERM as its
/// parent-death signal: the child ends when the test binary does, however it ends.
fn spawn_for_life_of_process(mut cmd: Command) {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        let mut child = match child {
            Ok(c) => {
                let _ = tx.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = child.wait();
    });
    rx.recv()
        .expect("spawner thread")
        .unwrap_or_else(|e| panic!("cannot start the hub: {e}"));
}

/// Creates the local user `name` with a home directory unless it exists (needs root).
pub fn ensure_system_user(name: &str) {
    // Tests run in parallel threads and two may want the same user at once: concurrent `useradd`s
    // of one name have left a home directory owned by a uid that is not the user's.
    static USERADD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        procs::output(
            Command::new("useradd").args(["-m", "-s", "/bin/bash", name]),
            30,
        )
        .ok();
    }
    // A home left owned by someone else (by such a race on an earlier run) would keep the user's
    // server from starting: give it back.
    let home = PathBuf::from(format!("/home/{name}"));
    let uid = procs::output(Command::new("id").args(["-u", name]), 10)
        .stdout_text()
        .trim()
        .parse::<u32>()
        .ok();
    let owner = std::fs::metadata(&home).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if let (Some(uid), Some(owner)) = (uid, owner) {
        if uid != owner {
            procs::output(
                Command::new("chown")
                    .args(["-R", &format!("{name}:{name}")])
                    .arg(&home),
                30,
            )
            .ok();
        }
    }
}

/// The numeric uid of local user `name`.
pub fn uid_of(name: &str) -> u32 {
    procs::output(Command::new("id").args(["-u", name]), 10)
        .ok()
        .stdout_text()
        .trim()
        .parse()
        .expect("uid")
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("private file");
    f.write_all(text.as_bytes()).expect("write private file");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
