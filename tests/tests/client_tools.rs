//! hubssh for people, against the real JupyterHub: `login` (token checked with the hub, saved
//! 0600), `logout`, `config add/remove/list` (a managed block in an ssh config, idempotent, the
//! rest of the file untouched byte for byte), `ssh NAME` with nothing but the written config, and
//! `--start` bringing a stopped server (default or named) up.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use hubssh_tests::client::Env;
use hubssh_tests::hub::hub;
use hubssh_tests::network::TlsFront;
use hubssh_tests::procs::{self, Finished};

const ALICE: &str = "hubssh-alice";
/// Her servers are started and stopped by these tests only.
const DORA: &str = "hubssh-dora";
/// Named by her email address, as OAuth hubs name users.
const ERIN: &str = "hubssh-erin@example.org";

/// `hubssh ARGS` with its config in `cfg`, `stdin` fed to it.
fn hubssh(cfg: &Path, args: &[&str], stdin: &str) -> Finished {
    let mut child = Command::new(hubssh_tests::bin("hubssh"))
        .args(args)
        .env("HUBSSH_CONFIG_DIR", cfg)
        .env_remove("HUBSSH_TOKEN")
        .env_remove("JUPYTERHUB_API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hubssh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    procs::wait(child, 120, &format!("hubssh {args:?}"))
}

fn token_text(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

/// The hand-written part of the test's ssh config: everything the block does not set.
fn hand_written(env: &Env) -> String {
    format!(
        "# my own settings\nHost *\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n  BatchMode yes\n  PubkeyAuthentication no\n  LogLevel ERROR\n  ControlPath none\n",
        env.path().join("known_hosts").display()
    )
}

/// `ssh -F config NAME 'echo ok'` with hubssh's config in `cfg`.
fn ssh_name(cfg: &Path, ssh_config: &Path, name: &str) -> Finished {
    procs::output(
        Command::new("ssh")
            .arg("-F")
            .arg(ssh_config)
            .env("HUBSSH_CONFIG_DIR", cfg)
            .env_remove("HUBSSH_TOKEN")
            .env_remove("JUPYTERHUB_API_TOKEN")
            .args([name, "echo ok"]),
        180,
    )
}

#[test]
fn login_checks_the_token_and_keeps_it_private() {
    let hub = hub();
    hub.user(ALICE);
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let store = cfg.join("hubssh.json");
    let (token, _) = hub.token(ALICE, None, env.path());

    let out = hubssh(&cfg, &["login", &hub.url()], "not-a-token\n");
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("refused the token (HTTP 403)"),
        "{}",
        out.stderr_text()
    );
    assert!(!store.exists(), "a refused token was saved");

    let out = hubssh(
        &cfg,
        &["login", &format!("{}/hub/home", hub.url())],
        &format!("{}\n", token_text(&token)),
    );
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains(&format!("as {ALICE}")),
        "{}",
        out.stderr_text()
    );
    let mode = std::fs::metadata(&store).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is not private");
    let saved = std::fs::read_to_string(&store).unwrap();
    assert!(
        saved.contains(&token_text(&token)) && saved.contains(ALICE),
        "{saved}"
    );

    // A URL that is not a hub answers HTML: said plainly.
    let web = env.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let (_site, port) = procs::http_server(&web);
    let out = hubssh(
        &cfg,
        &["login", &format!("http://127.0.0.1:{port}")],
        "abc\n",
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("an HTML page"),
        "{}",
        out.stderr_text()
    );

    let out = hubssh(&cfg, &["logout", &hub.url()], "");
    assert!(out.status.success());
    assert!(!std::fs::read_to_string(&store)
        .unwrap()
        .contains(&token_text(&token)));
}

#[test]
fn config_add_writes_one_block_and_ssh_uses_it() {
    let hub = hub();
    hub.start_server(ALICE);
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let (token, _) = hub.token(ALICE, None, env.path());
    let login = hubssh(&cfg, &["login", &hub.url()], &token_text(&token));
    assert!(login.status.success(), "{}", login.stderr_text());

    let ssh_config = env.path().join("ssh_config");
    let mine = hand_written(&env);
    std::fs::write(&ssh_config, &mine).unwrap();
    let file = ssh_config.display().to_string();
    let add = [
        "config",
        "add",
        "myhub",
        "--hub",
        &hub.url(),
        "--ssh-config",
        &file,
    ];

    let dry = hubssh(&cfg, &[&add[..], &["--dry-run"]].concat(), "");
    assert!(dry.status.success(), "{}", dry.stderr_text());
    assert!(
        dry.stdout_text().contains("+Host myhub"),
        "{}",
        dry.stdout_text()
    );
    assert_eq!(
        std::fs::read_to_string(&ssh_config).unwrap(),
        mine,
        "--dry-run wrote"
    );

    let first = hubssh(&cfg, &add, "");
    assert!(first.status.success(), "{}", first.stderr_text());
    let written = std::fs::read_to_string(&ssh_config).unwrap();
    // First, so the hand-written `Host *` cannot override its User or ProxyCommand; the rest
    // of the file byte for byte after it.
    assert!(
        written.starts_with("# ------------ START HUBSSH MANAGED BLOCK")
            && written.ends_with(&format!("\n{mine}")),
        "the block goes first and the hand-written part stays as it was:\n{written}"
    );
    assert!(
        written.contains(&format!("Host myhub\n  User {ALICE}\n")),
        "{written}"
    );
    let second = hubssh(&cfg, &add, "");
    assert!(
        second.stderr_text().contains("no changes"),
        "{}",
        second.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(&ssh_config).unwrap(),
        written,
        "not idempotent"
    );

    let out = ssh_name(&cfg, &ssh_config, "myhub");
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{}",
        out.stderr_text()
    );

    let list = hubssh(&cfg, &["config", "list"], "");
    assert!(
        list.stdout_text()
            .contains(&format!("myhub\t{}", hub.sshd_url(ALICE))),
        "{}",
        list.stdout_text()
    );

    let remove = hubssh(
        &cfg,
        &["config", "remove", "myhub", "--ssh-config", &file],
        "",
    );
    assert!(remove.status.success(), "{}", remove.stderr_text());
    let after = std::fs::read_to_string(&ssh_config).unwrap();
    assert_eq!(after, mine, "removing the block leaves the file as it was");

    // A broken block is an error, not a guess.
    std::fs::write(
        &ssh_config,
        format!("{mine}# ------------ START HUBSSH MANAGED BLOCK ------------\n"),
    )
    .unwrap();
    let broken = hubssh(&cfg, &add, "");
    assert!(!broken.status.success());
    assert!(
        broken.stderr_text().contains("without an end marker"),
        "{}",
        broken.stderr_text()
    );
}

#[test]
fn config_add_reaches_a_user_named_by_email() {
    // JupyterHub keeps `@` as it is in a server's URL, and its proxy and the server match the
    // path byte for byte: `%40` there would be a 404.
    let hub = hub();
    hub.start_server(ERIN);
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let (token, _) = hub.token(ERIN, None, env.path());
    let login = hubssh(&cfg, &["login", &hub.url()], &token_text(&token));
    assert!(login.status.success(), "{}", login.stderr_text());
    let ssh_config = env.path().join("ssh_config");
    std::fs::write(&ssh_config, hand_written(&env)).unwrap();
    let file = ssh_config.display().to_string();
    let add = hubssh(
        &cfg,
        &[
            "config",
            "add",
            "mail",
            "--hub",
            &hub.url(),
            "--ssh-config",
            &file,
        ],
        "",
    );
    assert!(add.status.success(), "{}", add.stderr_text());
    let list = hubssh(&cfg, &["config", "list"], "");
    assert!(
        list.stdout_text()
            .contains(&format!("mail\t{}", hub.sshd_url(ERIN))),
        "{}",
        list.stdout_text()
    );
    let out = ssh_name(&cfg, &ssh_config, "mail");
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{}",
        out.stderr_text()
    );
}

#[test]
fn config_add_names_hubssh_as_path_finds_it_and_the_hub_in_one_spelling() {
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let ssh_config = env.path().join("ssh_config");
    // A package manager's stable name for the program (a link to the versioned file).
    let bin = env.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(hubssh_tests::bin("hubssh"), bin.join("hubssh")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let add = |path: &str| {
        procs::output(
            Command::new(hubssh_tests::bin("hubssh"))
                .env("HUBSSH_CONFIG_DIR", &cfg)
                .env("PATH", path)
                .args(["config", "add", "pathy", "--user", "alice", "--hub"])
                .arg("https://Hub.Example.org:443/")
                .arg("--ssh-config")
                .arg(&ssh_config),
            30,
        )
    };
    let out = add(&path);
    assert!(out.status.success(), "{}", out.stderr_text());
    let written = std::fs::read_to_string(&ssh_config).unwrap();
    assert!(
        written.contains(&format!(
            "ProxyCommand {}/hubssh proxy pathy",
            bin.display()
        )),
        "{written}"
    );
    let list = hubssh(&cfg, &["config", "list"], "");
    assert!(
        list.stdout_text()
            .contains("pathy\thttps://hub.example.org/user/alice/sshd/"),
        "{}",
        list.stdout_text()
    );
    // Not on PATH: the program's own path. And a config that is a link (as dotfile managers
    // make) stays one: the file it points to gets the block.
    let dotfiles = env.path().join("dotfiles-ssh-config");
    std::fs::write(&dotfiles, "Host mine\n  User me\n").unwrap();
    std::fs::remove_file(&ssh_config).unwrap();
    std::os::unix::fs::symlink(&dotfiles, &ssh_config).unwrap();
    let out = add("/usr/bin:/bin");
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(std::fs::symlink_metadata(&ssh_config)
        .unwrap()
        .file_type()
        .is_symlink());
    let written = std::fs::read_to_string(&dotfiles).unwrap();
    assert!(written.ends_with("\nHost mine\n  User me\n"), "{written}");
    let own = hubssh_tests::bin("hubssh").canonicalize().unwrap();
    assert!(
        written.contains(&format!("ProxyCommand {} proxy pathy", own.display())),
        "{written}"
    );
}

fn stopped(user: &str, server: &str) {
    let hub = hub();
    hub.user(user);
    let path = if server.is_empty() {
        format!("/users/{user}/server")
    } else {
        format!("/users/{user}/servers/{server}")
    };
    let (status, body) = hub.api("DELETE", &path, None);
    assert!(
        matches!(status, 202 | 204 | 400 | 404),
        "stopping {user}/{server}: {status} {body}"
    );
    let gone = procs::wait_until(60, || {
        let (_, model) = hub.api("GET", &format!("/users/{user}"), None);
        model["servers"][server].is_null() || model["servers"][server]["stopped"] == true
    });
    assert!(gone, "{user}/{server} did not stop");
}

#[test]
fn start_brings_a_stopped_server_up() {
    let hub = hub();
    stopped(DORA, "");
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let (token, _) = hub.token(DORA, None, env.path());
    assert!(hubssh(&cfg, &["login", &hub.url()], &token_text(&token))
        .status
        .success());
    let ssh_config = env.path().join("ssh_config");
    std::fs::write(&ssh_config, hand_written(&env)).unwrap();
    let file = ssh_config.display().to_string();

    // Without --start: told that it is not running.
    let plain = [
        "config",
        "add",
        "dora",
        "--hub",
        &hub.url(),
        "--ssh-config",
        &file,
    ];
    assert!(hubssh(&cfg, &plain, "").status.success());
    let out = ssh_name(&cfg, &ssh_config, "dora");
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("is not running"),
        "{}",
        out.stderr_text()
    );

    // With --start: started, progress shown, connected.
    let with_start = [&plain[..], &["--start"]].concat();
    assert!(hubssh(&cfg, &with_start, "").status.success());
    let out = ssh_name(&cfg, &ssh_config, "dora");
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{}\n{}",
        out.stderr_text(),
        hub.log_tail()
    );
    assert!(
        out.stderr_text().contains("hubssh: starting"),
        "no progress: {}",
        out.stderr_text()
    );

    // A named server, by URL with --start.
    stopped(DORA, "gpu");
    let url = format!("{}/user/{DORA}/gpu/sshd/", hub.url());
    let proxy = format!(
        "{} proxy --start {url}",
        hubssh_tests::bin("hubssh").display()
    );
    let named = env.path().join("ssh_config_named");
    std::fs::write(
        &named,
        format!(
            "Host named\n  User {DORA}\n  ProxyCommand {proxy}\n{}",
            hand_written(&env)
        ),
    )
    .unwrap();
    let out = ssh_name(&cfg, &named, "named");
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{}\n{}",
        out.stderr_text(),
        hub.log_tail()
    );
    let (_, model) = hub.api("GET", &format!("/users/{DORA}"), None);
    assert_eq!(model["servers"]["gpu"]["ready"], true, "{model}");

    // A spawn that fails: the hub's message, not a hang.
    let broken = "hubssh-broken";
    hub.user(broken);
    let (token, _) = hub.token(broken, None, env.path());
    let out = hubssh(
        &cfg,
        &[
            "proxy",
            "--start",
            "--token-file",
            &token.display().to_string(),
            &hub.sshd_url(broken),
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("failed to start") && out.stderr_text().contains("Spawn failed"),
        "{}",
        out.stderr_text()
    );
}

/// `--start` on a server that is still stopping waits for the stop, then starts it; a start the
/// hub refuses comes with the hub's own reason.
#[test]
fn start_waits_out_a_stop_and_gives_the_hubs_reason_for_a_refusal() {
    // Her server takes 5 s to stop (tests/fixtures/jupyterhub_config.py).
    const SLOW: &str = "hubssh-slowstop";
    let hub = hub();
    hub.start_server(SLOW);
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let (token, _) = hub.token(SLOW, None, env.path());
    let token = token.display().to_string();
    let proxy = format!(
        "{} proxy --start --token-file {token} {}",
        hubssh_tests::bin("hubssh").display(),
        hub.sshd_url(SLOW)
    );
    let ssh_config = env.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host slow\n  User {SLOW}\n  ProxyCommand {proxy}\n{}",
            hand_written(&env)
        ),
    )
    .unwrap();

    // A stop asked for and not yet done (the DELETE answers once the server is gone).
    let stop = std::thread::spawn(|| hub.api("DELETE", &format!("/users/{SLOW}/server"), None));
    let pending = procs::wait_until(20, || hub.server(SLOW)["pending"] == "stop");
    assert!(pending, "no pending stop: {}", hub.server(SLOW));
    let out = ssh_name(&cfg, &ssh_config, "slow");
    let (status, body) = stop.join().unwrap();
    assert!(matches!(status, 202 | 204), "stop: {status} {body}");
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{}\n{}",
        out.stderr_text(),
        hub.log_tail()
    );
    assert!(
        out.stderr_text().contains("is stopping"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(hub.server(SLOW)["ready"], true);

    // A server name the hub does not accept: its reason, not a lost start.
    let bad = format!("{}/user/{SLOW}/Not_A_Slug/sshd/", hub.url());
    let out = hubssh(
        &cfg,
        &["proxy", "--start", "--token-file", &token, &bad],
        "",
    );
    let stderr = out.stderr_text();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot start") && stderr.contains("Invalid server_name"),
        "{stderr}"
    );
}

/// `hubssh doctor` output and status for `target`.
fn doctor(cfg: &Path, args: &[&str]) -> Finished {
    hubssh(cfg, &[&["doctor"], args].concat(), "")
}

/// The line of the first failed check.
fn failed_line(out: &Finished) -> String {
    let text = out.stdout_text();
    assert!(!out.status.success(), "doctor passed:\n{text}");
    text.lines()
        .find(|l| l.trim_start().starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line:\n{text}"))
        .to_owned()
}

/// A host that takes the TCP connection and never answers TLS (a black-holing firewall or load
/// balancer): doctor says the TLS step failed, and ends, instead of waiting for ever.
#[test]
fn doctor_gives_up_on_a_host_that_never_answers_tls() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/user/x/sshd/", silent.local_addr().unwrap());
    // Doctor connects twice (the TCP step, then TLS): every connection is taken and held.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let env = Env::new();
    let out = doctor(&env.path().join("cfg"), &[&url]);
    let line = failed_line(&out);
    assert!(
        line.contains("TLS") && line.contains("no answer within"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("ok    TCP"),
        "{}",
        out.stdout_text()
    );
}

#[test]
fn doctor_pinpoints_the_failing_hop() {
    let hub = hub();
    hub.start_server(ALICE);
    hub.start_server("hubssh-plain");
    hub.user("hubssh-bob");
    let env = Env::new();
    let cfg = env.path().join("cfg");
    let (alice, _) = hub.token(ALICE, None, env.path());
    let alice = alice.display().to_string();

    let out = doctor(&cfg, &["--token-file", &alice, &hub.sshd_url(ALICE)]);
    let text = out.stdout_text();
    assert!(out.status.success(), "{text}\n{}", out.stderr_text());
    for step in ["DNS", "TCP", "token", "server", "endpoint", "ssh"] {
        assert!(
            text.contains(&format!("ok    {step}")),
            "{step} not ok:\n{text}"
        );
    }
    assert!(
        text.contains("SSH-2.0-") && text.contains("all checks passed"),
        "{text}"
    );

    let garbage = env.path().join("garbage");
    std::fs::write(&garbage, "garbage").unwrap();
    let out = doctor(
        &cfg,
        &[
            "--token-file",
            &garbage.display().to_string(),
            &hub.sshd_url(ALICE),
        ],
    );
    assert!(failed_line(&out).contains("token"), "{}", out.stdout_text());

    // Scoped to the tunnel alone: it may not read alice's model, and it gets in.
    let (tunnel_only, _) = hub.token(
        ALICE,
        Some(&["access:servers!user=hubssh-alice"]),
        env.path(),
    );
    let out = doctor(
        &cfg,
        &[
            "--token-file",
            &tunnel_only.display().to_string(),
            &hub.sshd_url(ALICE),
        ],
    );
    assert!(out.status.success(), "{}", out.stdout_text());

    let (bob, _) = hub.token("hubssh-bob", None, env.path());
    let out = doctor(
        &cfg,
        &[
            "--token-file",
            &bob.display().to_string(),
            &hub.sshd_url("hubssh-bob"),
        ],
    );
    let line = failed_line(&out);
    assert!(
        line.contains("server") && line.contains("not running"),
        "{}",
        out.stdout_text()
    );

    let (plain, _) = hub.token("hubssh-plain", None, env.path());
    let out = doctor(
        &cfg,
        &[
            "--token-file",
            &plain.display().to_string(),
            &hub.sshd_url("hubssh-plain"),
        ],
    );
    let line = failed_line(&out);
    assert!(
        line.contains("endpoint") && line.contains("no sshd endpoint"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("install jupyter-hubssh"),
        "{}",
        out.stdout_text()
    );

    let tls = TlsFront::start(env.path(), hub.port);
    let url = format!("{}/user/{ALICE}/sshd/", tls.url());
    let out = doctor(&cfg, &["--token-file", &alice, &url]);
    let line = failed_line(&out);
    assert!(
        line.contains("TLS") && line.contains("not trusted"),
        "{}",
        out.stdout_text()
    );
    let ca = tls.ca.display().to_string();
    let out = doctor(&cfg, &["--token-file", &alice, "--cacert", &ca, &url]);
    assert!(out.status.success(), "{}", out.stdout_text());
}
