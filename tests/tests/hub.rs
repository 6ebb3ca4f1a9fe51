//! Through a real JupyterHub: ssh -> `hubssh proxy` -> configurable-http-proxy -> the user's
//! jupyter-server -> jupyter-server-proxy (raw socket, private unix socket) -> hubsshd from the
//! `jupyter-hubssh` wheel, running as the hub user. The hub token is the only credential: the ssh
//! config offers no key. Also hubsshd's own `--auth hub` against the same hub, the failure
//! messages people see, the safety of the socket, and hub activity.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hubssh_tests::client::{Backend, Env};
use hubssh_tests::hub::{self, hub, uid_of};
use hubssh_tests::server::{Hubsshd, Listen};
use hubssh_tests::{procs, scenarios};

const ALICE: &str = "hubssh-alice";
const BOB: &str = "hubssh-bob";
/// Her server runs without jupyter-server-proxy, so without the sshd endpoint.
const PLAIN: &str = "hubssh-plain";

fn proxy_command(token: Option<&Path>, url: &str) -> String {
    let token = token
        .map(|t| format!("--token-file {} ", t.display()))
        .unwrap_or_default();
    format!(
        "{} proxy {token}{url}",
        hubssh_tests::bin("hubssh").display()
    )
}

/// An env whose `Host hub` is alice's running server, reached with her own token.
fn alice() -> (Env, PathBuf) {
    let hub = hub();
    hub.start_server(ALICE);
    let env = Env::new();
    let (token, _) = hub.token(ALICE, None, env.path());
    env.write_keyless_config(ALICE, &proxy_command(Some(&token), &hub.sshd_url(ALICE)));
    (env, token)
}

/// A directory in alice's home for one test's files, removed at the end.
struct AliceDir(PathBuf);

impl AliceDir {
    fn new(env: &Env, name: &str) -> AliceDir {
        let dir = PathBuf::from(format!("/home/{ALICE}/{name}-{}", std::process::id()));
        env.ssh_run(&format!("rm -rf {0} && mkdir -p {0}", dir.display()), 60)
            .ok();
        AliceDir(dir)
    }
}

impl Drop for AliceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn exec_through_the_hub_with_only_the_token() {
    let (env, _) = alice();
    let out = env.ssh_run("id -un; echo $HOME", 60).ok();
    assert_eq!(out.stdout_text(), format!("{ALICE}\n/home/{ALICE}\n"));
    scenarios::exec_round_trip(&env);
}

#[test]
fn transfers_through_the_hub() {
    let (env, _) = alice();
    let far = AliceDir::new(&env, "transfers");
    scenarios::transfers(&env, &far.0, 64 << 20);
}

#[test]
fn interactive_pty_through_the_hub() {
    let (env, _) = alice();
    scenarios::interactive(&env);
}

/// Runs `ssh hub true` through `proxy`, expecting a failure whose stderr contains `expected`.
fn refused(env: &Env, user: &str, proxy: &str, expected: &str) {
    env.write_keyless_config(user, proxy);
    let out = procs::output(
        env.ssh()
            .env_remove("HUBSSH_TOKEN")
            .env_remove("JUPYTERHUB_API_TOKEN")
            .args(["hub", "true"]),
        30,
    );
    let stderr = out.stderr_text();
    assert!(
        !out.status.success(),
        "ssh through {proxy} succeeded; stderr: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "ssh through {proxy}: expected {expected:?} in stderr:\n{stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("hubssh:"))
        .collect();
    assert_eq!(ours.len(), 1, "one line from hubssh expected:\n{stderr}");
}

#[test]
fn refusals_say_what_happened() {
    let hub = hub();
    hub.start_server(ALICE);
    hub.user(BOB);
    let env = Env::new();
    let url = hub.sshd_url(ALICE);

    refused(&env, ALICE, &proxy_command(None, &url), "none was given");
    let (bobs, _) = hub.token(BOB, None, env.path());
    refused(&env, ALICE, &proxy_command(Some(&bobs), &url), "HTTP 403");
    let garbage = env.path().join("garbage-token");
    std::fs::write(&garbage, "not-a-token").unwrap();
    refused(
        &env,
        ALICE,
        &proxy_command(Some(&garbage), &url),
        "HTTP 403",
    );

    // Bob's server is not running: the hub says so, and hubssh says how to start it.
    if !hub.server(BOB).is_null() {
        hub.stop_server(BOB);
    }
    refused(
        &env,
        BOB,
        &proxy_command(Some(&bobs), &hub.sshd_url(BOB)),
        "is not running",
    );

    // A server without jupyter-hubssh has no endpoint at .../sshd/.
    hub.start_server(PLAIN);
    let (plains, _) = hub.token(PLAIN, None, env.path());
    refused(
        &env,
        PLAIN,
        &proxy_command(Some(&plains), &hub.sshd_url(PLAIN)),
        "has no sshd endpoint",
    );
    // Her named server, reached with a token that may read her user but not her servers (the
    // hub's model then has no `servers`): still "no endpoint", not "not running".
    hub.start_named_server(PLAIN, "extra");
    let scopes = [
        &format!("access:servers!user={PLAIN}")[..],
        &format!("read:users!user={PLAIN}"),
    ];
    let (narrow, _) = hub.token(PLAIN, Some(&scopes), env.path());
    let named = format!("{}/user/{PLAIN}/extra/sshd/", hub.url());
    refused(
        &env,
        PLAIN,
        &proxy_command(Some(&narrow), &named),
        "has no sshd endpoint",
    );
}

#[test]
fn the_hubs_own_token_goes_to_that_hub_only() {
    // What a terminal in a hub server has: JUPYTERHUB_API_TOKEN, and the hub it is for.
    let hub = hub();
    hub.start_server(ALICE);
    let env = Env::new();
    let (token, _) = hub.token(ALICE, None, env.path());
    let token = std::fs::read_to_string(token).unwrap();
    env.write_keyless_config(ALICE, &proxy_command(None, &hub.sshd_url(ALICE)));
    let ssh_with = |hub_var: &str, hub_url: &str| {
        procs::output(
            env.ssh()
                .env_remove("HUBSSH_TOKEN")
                .env_remove("JUPYTERHUB_API_URL")
                .env_remove("JUPYTERHUB_PUBLIC_HUB_URL")
                .env_remove("JUPYTERHUB_PUBLIC_URL")
                .env("JUPYTERHUB_API_TOKEN", token.trim())
                .env(hub_var, hub_url)
                .args(["hub", "echo in"]),
            60,
        )
    };

    let elsewhere = ssh_with(
        "JUPYTERHUB_API_URL",
        "https://another-hub.example.org/hub/api",
    );
    let stderr = elsewhere.stderr_text();
    assert!(!elsewhere.status.success(), "{stderr}");
    assert!(
        stderr.contains("JUPYTERHUB_API_TOKEN is not sent: it is for the hub at https://another-hub.example.org/hub/api")
            && stderr.contains("none was given"),
        "{stderr}"
    );

    let here = ssh_with("JUPYTERHUB_PUBLIC_HUB_URL", &format!("{}/hub/", hub.url()));
    assert_eq!(
        here.stdout_text(),
        "in\n",
        "the token of this hub, sent to it: {}",
        here.stderr_text()
    );
}

/// Pids of processes named `comm` run by `uid`.
fn pids_of(comm: &str, uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let owner = entry.metadata().map(|m| m.uid()).ok();
        if name.trim() == comm && owner == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

/// The TCP sockets process `pid` listens on, from /proc (local address in the kernel's hex).
fn tcp_listeners(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")
                        .map(|s| s.trim_end_matches(']').to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols: sl local remote st ... inode (10th)
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                found.push(cols[1].to_owned());
            }
        }
    }
    found
}

#[test]
fn hubsshd_listens_on_a_private_unix_socket_only() {
    let (env, _) = alice();
    // A session is live while we look.
    let _session = procs::background(env.ssh().args(["hub", "sleep 60"]));
    let alice_uid = uid_of(ALICE);
    let mut pids = Vec::new();
    assert!(
        procs::wait_until(30, || {
            pids = pids_of("hubsshd", alice_uid);
            !pids.is_empty()
        }),
        "no hubsshd running as {ALICE}"
    );
    hub::ensure_system_user(BOB);
    for pid in pids {
        assert_eq!(
            tcp_listeners(pid),
            Vec::<String>::new(),
            "hubsshd {pid} listens on TCP"
        );
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let socket = args
            .iter()
            .position(|a| a == "--unix-socket")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("hubsshd {pid} has no --unix-socket: {args:?}"));
        let dir = socket.parent().unwrap();
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!(meta.uid(), alice_uid, "{} is not alice's", dir.display());
        assert_eq!(
            meta.mode() & 0o077,
            0,
            "{} is open to others",
            dir.display()
        );

        // Another local user can neither look into the directory nor connect to the socket.
        let as_bob = |args: &[&str]| {
            procs::output(
                Command::new("runuser").args(["-u", BOB, "--"]).args(args),
                20,
            )
        };
        let ls = as_bob(&["ls", &dir.display().to_string()]);
        assert!(!ls.status.success(), "bob can list {}", dir.display());
        let connect = as_bob(&[
            "socat",
            "-u",
            "/dev/null",
            &format!("UNIX-CONNECT:{}", socket.display()),
        ]);
        assert!(
            !connect.status.success(),
            "bob can connect to {}",
            socket.display()
        );
        assert!(
            connect.stderr_text().contains("ermission denied"),
            "bob's connect failed for another reason: {}",
            connect.stderr_text()
        );
    }
}

/// The HTTP status hubsshd gives a WebSocket upgrade with `token` (from a file) at `addr`.
fn upgrade_status(addr: &str, token: Option<&Path>, dir: &Path) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
    .args(["-H", "Sec-WebSocket-Version: 13"])
    .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]);
    if let Some(token) = token {
        let header = dir.join("upgrade.header");
        let value = std::fs::read_to_string(token).unwrap();
        std::fs::write(&header, format!("Authorization: token {}", value.trim())).unwrap();
        cmd.arg("-H").arg(format!("@{}", header.display()));
    }
    cmd.arg(format!("http://{addr}/user/{ALICE}/sshd/"));
    let out = procs::output(&mut cmd, 20);
    out.stdout_text().trim().parse().unwrap_or(0)
}

#[test]
fn hubsshd_auth_hub_checks_tokens_with_the_hub() {
    let hub = hub();
    hub.user(ALICE);
    hub.user(BOB);
    let env = Env::new();
    let server = Hubsshd::start(
        env.path(),
        Backend::Embedded,
        Listen::Tcp,
        &env.authorized_keys,
        &[
            "--auth",
            "hub",
            "--hub-api-url",
            &hub.api_url(),
            "--hub-user",
            ALICE,
        ],
    );
    let (own, _) = hub.token(ALICE, None, env.path());
    let (no_access, _) = hub.token(
        ALICE,
        Some(&["read:users:name!user=hubssh-alice"]),
        env.path(),
    );
    let (bobs, _) = hub.token(BOB, None, env.path());
    let (revoked, id) = hub.token(ALICE, None, env.path());
    hub.revoke(ALICE, &id);
    let garbage = env.path().join("garbage");
    std::fs::write(&garbage, "garbage").unwrap();

    let status = |token| upgrade_status(&server.addr, token, env.path());
    assert_eq!(
        status(Some(&own)),
        101,
        "owner's token; log:\n{}",
        server.log()
    );
    assert_eq!(status(None), 401, "no token");
    assert_eq!(
        status(Some(&no_access)),
        404,
        "token without access:servers"
    );
    assert_eq!(status(Some(&bobs)), 404, "another user's token");
    assert_eq!(status(Some(&revoked)), 403, "revoked token");
    assert_eq!(status(Some(&garbage)), 403, "garbage token");

    // The owner's token carries a real session (SSH keys still apply on this TCP listener).
    env.write_config(&proxy_command(Some(&own), &server.ws_url()));
    let out = env.ssh_run("echo through-hub-auth", 60).ok();
    assert_eq!(out.stdout_text(), "through-hub-auth\n");
    // A token without access: hubssh says so in one line.
    env.write_config(&proxy_command(Some(&no_access), &server.ws_url()));
    let out = env.ssh_run("true", 60);
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("(HTTP 404)") && out.stderr_text().contains("may access"),
        "{}",
        out.stderr_text()
    );

    // Raw SSH carries no token: refused on a TCP listener with hub auth.
    env.write_config(&format!("socat - TCP:{}", server.addr));
    let out = env.ssh_run("true", 30);
    assert!(!out.status.success(), "raw ssh got in");
    assert!(
        server.log().contains("closing raw ssh connection"),
        "log:\n{}",
        server.log()
    );

    // A hub that cannot be asked is a 503, never an accept.
    let dead = format!("http://127.0.0.1:{}/hub/api", procs::free_port());
    let cut_off = Hubsshd::start(
        &env.path().join("dead"),
        Backend::Embedded,
        Listen::Tcp,
        &env.authorized_keys,
        &["--auth", "hub", "--hub-api-url", &dead, "--hub-user", ALICE],
    );
    assert_eq!(upgrade_status(&cut_off.addr, Some(&own), env.path()), 503);
}

#[test]
fn an_ssh_session_is_hub_activity() {
    let (env, _) = alice();
    let last = || {
        hub().server(ALICE)["last_activity"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut session = env.spawn_ssh(
        &["hub", "for i in $(seq 12); do echo tick; sleep 1; done"],
        Stdio::null(),
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    let before = last();
    let moved = procs::wait_until(8, || last() > before);
    let _ = session.kill();
    let _ = session.wait();
    assert!(
        moved,
        "last_activity stayed at {before} during an ssh session"
    );
}

#[test]
fn the_package_reports_its_command_and_conflicts() {
    let python = hub::venv().join("bin/python");
    let out = procs::output(Command::new(&python).args(["-m", "jupyter_hubssh"]), 60).ok();
    let text = out.stdout_text();
    assert!(
        text.contains("--unix-socket '{unix_socket}' --backend embedded --ssh-auth tunnel"),
        "{text}"
    );

    let out = procs::output(
        Command::new(&python)
            .args(["-m", "jupyter_hubssh"])
            .env("HUBSSH_BACKEND", "openssh")
            .env("HUBSSH_ARGS", "--sshd-option 'Banner none'"),
        60,
    )
    .ok();
    assert!(
        out.stdout_text()
            .contains("--backend openssh --sshd-option 'Banner none'"),
        "{}",
        out.stdout_text()
    );

    // Traits from the Jupyter config win over the environment.
    let code = "from traitlets.config import Config; from jupyter_hubssh import HubSSH; \
                print(HubSSH(config=Config({'HubSSH': {'ssh_auth': 'keys', 'extra_args': ['-v']}})).command()[3:])";
    let out = procs::output(
        Command::new(&python)
            .args(["-c", code])
            .env("HUBSSH_SSH_AUTH", "tunnel"),
        60,
    )
    .ok();
    assert_eq!(
        out.stdout_text().trim(),
        "['--backend', 'embedded', '--ssh-auth', 'keys', '-v']"
    );

    // Installed beside jupyter-sshd-proxy (same route name): detected and explained.
    let sshd_proxy = std::env::var_os("HUBSSH_TEST_SSHD_PROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hubssh-ci/sshd-proxy"));
    let out = procs::output(
        Command::new(&python)
            .args(["-m", "jupyter_hubssh"])
            .env("PYTHONPATH", &sshd_proxy),
        60,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    let err = out.stderr_text();
    assert!(
        err.contains("jupyter-sshd-proxy") && err.contains("pip uninstall jupyter-sshd-proxy"),
        "{err}"
    );
}
