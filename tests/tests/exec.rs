//! `ssh hub 'cmd'` through every route: stdout, stderr and the exit code come back intact, and
//! stdin reaches the command with its EOF.

use std::io::Write;
use std::process::Stdio;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::{data, procs};

fn exec_round_trip(backend: Backend, route: Route) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    let out = env.ssh_run("echo out; echo err >&2; exit 7", 60);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", out.stderr_text());
    assert_eq!(out.stdout_text(), "out\n");
    assert!(
        out.stderr_text().contains("err\n"),
        "stderr: {}",
        out.stderr_text()
    );

    // stdin reaches the command, and so does its EOF (wc -c ends only at EOF).
    let payload = data::bytes(3 << 20, 9);
    let mut input = b"hello\n".to_vec();
    input.extend_from_slice(&payload);
    let out = feed(
        &env,
        &["hub", "read line; echo \"got $line\"; wc -c; exit 3"],
        input,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", out.stderr_text());
    assert_eq!(
        out.stdout_text().split_whitespace().collect::<Vec<_>>(),
        ["got", "hello", &(3 << 20).to_string()]
    );

    // The VS Code bootstrap pattern: `ssh -T host bash` with its script on stdin, no echo.
    let script = b"echo one two three | wc -w\necho done >&2\nexit 4\n".to_vec();
    let out = feed(&env, &["-T", "hub", "bash"], script);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", out.stderr_text());
    assert_eq!(out.stdout_text().trim(), "3");
    assert!(out.stderr_text().contains("done"));

    // env requests: LANG and LC_* pass (OpenSSH's usual AcceptEnv), others do not.
    let out = procs::output(
        env.ssh()
            .env("LANG", "hubssh-test.UTF-8")
            .env("LC_HUBSSH_TEST", "lc-value")
            .env("HUBSSH_NOT_ACCEPTED", "nope")
            .args(["-o", "SendEnv=LANG LC_HUBSSH_TEST HUBSSH_NOT_ACCEPTED"])
            .args([
                "hub",
                "echo \"$LANG|$LC_HUBSSH_TEST|${HUBSSH_NOT_ACCEPTED:-unset}\"",
            ]),
        30,
    )
    .ok();
    assert_eq!(out.stdout_text(), "hubssh-test.UTF-8|lc-value|unset\n");

    // A command killed by a signal: reported as exit-signal, which OpenSSH's client turns into 255.
    let out = env.ssh_run("kill -TERM $$", 30);
    assert_eq!(
        out.status.code(),
        Some(255),
        "stderr: {}",
        out.stderr_text()
    );
}

/// Runs ssh with `args`, writing `input` to its stdin and closing it.
fn feed(env: &Env, args: &[&str], input: Vec<u8>) -> procs::Finished {
    let mut child = env.spawn_ssh(args, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = procs::wait(child, 60, &format!("ssh {args:?}"));
    writer.join().unwrap().unwrap();
    out
}

#[test]
fn embedded_exec_through_hubssh_proxy() {
    exec_round_trip(Backend::Embedded, Route::Hubssh);
}

#[test]
fn embedded_exec_through_raw_unix_socket() {
    exec_round_trip(Backend::Embedded, Route::Raw);
}

#[test]
fn embedded_exec_through_websocat() {
    exec_round_trip(Backend::Embedded, Route::Websocat);
}

#[test]
fn openssh_exec_through_hubssh_proxy() {
    exec_round_trip(Backend::OpenSsh, Route::Hubssh);
}

#[test]
fn openssh_exec_through_raw_unix_socket() {
    exec_round_trip(Backend::OpenSsh, Route::Raw);
}

#[test]
fn openssh_exec_through_websocat() {
    exec_round_trip(Backend::OpenSsh, Route::Websocat);
}
