//! The networks between people and their hub, with the real JupyterHub behind: TLS with a
//! private CA (trusted by `--cacert` or `SSL_CERT_FILE`, refused otherwise with the host and the
//! reason, accepted by `--insecure` with a warning), and a real HTTP proxy (tinyproxy): CONNECT
//! from `HTTPS_PROXY`, skipped for `NO_PROXY`, basic auth, and the proxy's refusals reported as
//! the proxy's.

use std::path::Path;

use hubssh_tests::client::Env;
use hubssh_tests::hub::hub;
use hubssh_tests::network::{Tinyproxy, TlsFront};
use hubssh_tests::procs;

const ALICE: &str = "hubssh-alice";

/// Env with alice's token; the hub's server for alice is running.
fn alice() -> (Env, std::path::PathBuf) {
    let hub = hub();
    hub.start_server(ALICE);
    let env = Env::new();
    let (token, _) = hub.token(ALICE, None, env.path());
    (env, token)
}

fn proxy_command(token: &Path, args: &str, url: &str) -> String {
    format!(
        "{} proxy --token-file {} {args} {url}",
        hubssh_tests::bin("hubssh").display(),
        token.display()
    )
}

/// `ssh hub 'echo ok'` with `envs` set (and the proxy variables cleared otherwise).
fn ssh_ok(env: &Env, envs: &[(&str, &str)]) -> procs::Finished {
    let mut cmd = env.ssh();
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(envs.iter().copied()).args(["hub", "echo ok"]);
    procs::output(&mut cmd, 60)
}

fn assert_ok(out: &procs::Finished, what: &str) {
    assert!(
        out.status.success() && out.stdout_text() == "ok\n",
        "{what}: {}\nstderr: {}",
        out.status,
        out.stderr_text()
    );
}

fn assert_refused(out: &procs::Finished, expected: &[&str], what: &str) {
    let stderr = out.stderr_text();
    assert!(!out.status.success(), "{what}: succeeded");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("hubssh:"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "{what}: one line from hubssh expected:\n{stderr}"
    );
    for e in expected {
        assert!(
            ours[0].contains(e),
            "{what}: expected {e:?} in {:?}",
            ours[0]
        );
    }
}

#[test]
fn tls_with_a_private_ca() {
    let hub = hub();
    let (env, token) = alice();
    let tls = TlsFront::start(env.path(), hub.port);
    let url = format!("{}/user/{ALICE}/sshd/", tls.url());
    let ca = tls.ca.display().to_string();

    env.write_keyless_config(
        ALICE,
        &proxy_command(&token, &format!("--cacert {ca}"), &url),
    );
    assert_ok(&ssh_ok(&env, &[]), "--cacert");

    env.write_keyless_config(ALICE, &proxy_command(&token, "", &url));
    assert_ok(&ssh_ok(&env, &[("SSL_CERT_FILE", &ca)]), "SSL_CERT_FILE");
    let out = ssh_ok(&env, &[]);
    assert_refused(
        &out,
        &["TLS with localhost failed", "not trusted", "--cacert"],
        "unknown CA",
    );

    env.write_keyless_config(ALICE, &proxy_command(&token, "--insecure", &url));
    let out = ssh_ok(&env, &[]);
    assert_ok(&out, "--insecure");
    assert!(
        out.stderr_text().contains("warning: --insecure"),
        "no warning: {}",
        out.stderr_text()
    );
}

#[test]
fn through_an_http_proxy() {
    let hub = hub();
    let (env, token) = alice();
    let tls = TlsFront::start(env.path(), hub.port);
    let proxy = Tinyproxy::start(env.path(), &[]);
    let url = format!("{}/user/{ALICE}/sshd/", tls.url());
    let target = format!("localhost:{}", tls.port);
    let cacert = format!("--cacert {}", tls.ca.display());
    env.write_keyless_config(ALICE, &proxy_command(&token, &cacert, &url));

    let via = proxy.url(None);
    assert_ok(&ssh_ok(&env, &[("HTTPS_PROXY", &via)]), "HTTPS_PROXY");
    assert_eq!(
        proxy.connects_to(&target),
        1,
        "the tunnel did not go through the proxy"
    );
    assert_ok(
        &ssh_ok(
            &env,
            &[("https_proxy", &via), ("NO_PROXY", "example.org,localhost")],
        ),
        "NO_PROXY",
    );
    assert_eq!(
        proxy.connects_to(&target),
        1,
        "NO_PROXY did not bypass the proxy"
    );

    // --proxy wins over the environment; plain ws:// goes through HTTP_PROXY.
    let with_flag = format!("{cacert} --proxy {via}");
    env.write_keyless_config(ALICE, &proxy_command(&token, &with_flag, &url));
    assert_ok(
        &ssh_ok(&env, &[("HTTPS_PROXY", "http://127.0.0.1:1")]),
        "--proxy",
    );
    assert_eq!(proxy.connects_to(&target), 2);
    env.write_keyless_config(ALICE, &proxy_command(&token, "", &hub.sshd_url(ALICE)));
    assert_ok(
        &ssh_ok(&env, &[("HTTP_PROXY", &via)]),
        "HTTP_PROXY for ws://",
    );
    assert_eq!(proxy.connects_to(&format!("127.0.0.1:{}", hub.port)), 1);
}

#[test]
fn proxy_refusals_are_the_proxys() {
    let hub = hub();
    let (env, token) = alice();
    let tls = TlsFront::start(env.path(), hub.port);
    let url = format!("{}/user/{ALICE}/sshd/", tls.url());
    let cacert = format!("--cacert {}", tls.ca.display());
    env.write_keyless_config(ALICE, &proxy_command(&token, &cacert, &url));

    let guarded = Tinyproxy::start(env.path(), &["BasicAuth hubssh s3cret"]);
    let out = ssh_ok(&env, &[("HTTPS_PROXY", &guarded.url(None))]);
    assert_refused(
        &out,
        &["HTTP proxy 127.0.0.1:", "wants credentials (HTTP 407)"],
        "no proxy credentials",
    );
    let out = ssh_ok(&env, &[("HTTPS_PROXY", &guarded.url(Some("hubssh:wrong")))]);
    assert_refused(
        &out,
        &["refused the credentials"],
        "wrong proxy credentials",
    );
    assert!(
        !out.stderr_text().contains("wrong"),
        "the password was printed"
    );
    assert_ok(
        &ssh_ok(
            &env,
            &[("HTTPS_PROXY", &guarded.url(Some("hubssh:s3cret")))],
        ),
        "basic auth",
    );

    let strict = Tinyproxy::start(env.path(), &["ConnectPort 443"]);
    let out = ssh_ok(&env, &[("HTTPS_PROXY", &strict.url(None))]);
    assert_refused(
        &out,
        &["refused to connect to localhost:", "HTTP 403"],
        "CONNECT port denied",
    );

    let dead = format!("http://127.0.0.1:{}", procs::free_port());
    let out = ssh_ok(&env, &[("HTTPS_PROXY", &dead)]);
    assert_refused(
        &out,
        &["HTTP proxy 127.0.0.1:", "cannot connect to it"],
        "no proxy there",
    );
}

#[test]
fn unknown_host_and_closed_port_are_named() {
    let env = Env::new();
    let token = env.path().join("token");
    std::fs::write(&token, "abc").unwrap();
    env.write_keyless_config(
        ALICE,
        &proxy_command(
            &token,
            "",
            "https://hubssh-no-such-host.invalid/user/a/sshd/",
        ),
    );
    assert_refused(
        &ssh_ok(&env, &[]),
        &["cannot resolve hubssh-no-such-host.invalid"],
        "DNS",
    );
    let closed = format!("http://127.0.0.1:{}/user/a/sshd/", procs::free_port());
    env.write_keyless_config(ALICE, &proxy_command(&token, "", &closed));
    assert_refused(
        &ssh_ok(&env, &[]),
        &["connection refused by 127.0.0.1:"],
        "closed port",
    );
}
