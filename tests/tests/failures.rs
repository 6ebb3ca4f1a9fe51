//! What goes wrong, and how quickly and clearly hubssh and hubsshd say so: a wrong path, nothing
//! listening, the server killed mid-transfer, garbage and probes next to a live session, and
//! start-up refusals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::server::refused;
use hubssh_tests::{bin, procs};

/// `hubssh proxy URL` with stdin closed, bounded in time.
fn proxy(url: &str) -> procs::Finished {
    procs::output(Command::new(bin("hubssh")).args(["proxy", url]), 30)
}

#[test]
fn wrong_path_is_a_clear_error() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let out = proxy(&format!("ws://{}/user/test/lab/", server.addr));
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr_text();
    assert!(err.starts_with("hubssh: nothing at ws://"), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = proxy(&format!("ws://127.0.0.1:{port}/sshd/"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("connection refused"),
        "{}",
        out.stderr_text()
    );

    let out = proxy("not a url");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("is not a URL"),
        "{}",
        out.stderr_text()
    );
}

/// With nobody reading its stderr (ssh's terminal gone, a log pipe closed), hubssh proxy still
/// carries the session, debug logs and all, and still fails with status 1, not a panic.
#[test]
fn a_broken_stderr_changes_nothing_but_the_messages() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    // The shell's stderr becomes a pipe whose reader has exited before hubssh starts.
    env.write_config(&format!(
        "bash -c 'exec 2> >(exec true); wait $!; exec {} proxy -v {}'",
        bin("hubssh").display(),
        server.ws_url()
    ));
    let out = env.ssh_run("echo carried", 30);
    assert_eq!(out.stdout_text(), "carried\n", "{}", out.stderr_text());

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(bin("hubssh"))
        .args(["proxy", &format!("ws://127.0.0.1:{port}/sshd/")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let exited = procs::wait_until(10, || child.try_wait().unwrap().is_some());
    assert!(exited, "hubssh proxy did not exit");
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[test]
fn status_page_answers_plain_get() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /user/test/sshd/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("hubsshd") && text.contains("backend: embedded"),
        "{text}"
    );
}

#[test]
fn killed_server_ends_proxy_promptly() {
    let env = Env::new();
    let mut server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let mut child = Command::new(bin("hubssh"))
        .args(["proxy", &server.ws_url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"SSH-2.0-hubssh_test\r\n").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = [0u8; 4];
    stdout.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-");

    server.signal(9);
    server.wait_exit(10).expect("hubsshd exits on SIGKILL");
    let start = Instant::now();
    let out = procs::wait(child, 10, "hubssh proxy after the server died");
    drop(stdin);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr_text());
    assert!(
        out.stderr_text().contains("hubssh: "),
        "{}",
        out.stderr_text()
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn killed_server_mid_transfer_ends_ssh_promptly() {
    let env = Env::new();
    let mut server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let mut child = env.spawn_ssh(&["hub", "cat /dev/zero"], Stdio::null());
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while total < 8 << 20 {
        total += stdout.read(&mut buf).unwrap();
    }
    server.signal(9);
    let reader = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let out = procs::wait(child, 15, "ssh after the server died mid-transfer");
    let _ = reader.join();
    assert!(
        !out.status.success(),
        "ssh should fail when the tunnel dies"
    );
    assert!(
        out.stderr_text().contains("hubssh: "),
        "{}",
        out.stderr_text()
    );
    let _ = server.wait_exit(5);
}

#[test]
fn garbage_and_probes_leave_live_sessions_alone() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let live = env.spawn_ssh(&["hub", "sleep 2; echo still-here"], Stdio::null());
    server.wait_for_login();

    for _ in 0..3 {
        drop(TcpStream::connect(&server.addr).unwrap()); // readiness probes
    }
    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02hello garbage\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET / HTTP/1.1\r\nBroken header line\r\n\r\n",
        b"SSH-2.0-garbage\r\n\x00\x00\x00\xff\xff\xff\xff",
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.read_to_end(&mut Vec::new());
    }

    let out = procs::wait(live, 30, "the live session");
    assert_eq!(
        out.stdout_text(),
        "still-here\n",
        "stderr: {}",
        out.stderr_text()
    );
    assert_eq!(env.ssh_run("echo again", 30).ok().stdout_text(), "again\n");

    let log = server.log();
    assert!(log.contains("neither HTTP nor SSH"), "{log}");
    assert!(log.contains("bad HTTP request"), "{log}");
    assert_eq!(log.matches("readiness probe").count(), 3, "{log}");
    for line in log.lines().filter(|l| l.contains("WARN")) {
        assert!(
            line.contains("neither HTTP nor SSH")
                || line.contains("bad HTTP request")
                || line.contains("sshd"),
            "unexpected warning: {line}"
        );
    }
}

#[test]
fn silent_connections_cannot_crowd_out_a_session() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    // More peers than hubsshd serves at once, each saying nothing or half a request.
    let silent: Vec<TcpStream> = (0..600)
        .map(|i| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /sshd/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            }
            s
        })
        .collect();
    // Well within the time a silent peer may take to send its first bytes (30 s).
    assert_eq!(
        env.ssh_run("echo through", 20).ok().stdout_text(),
        "through\n"
    );
    // Room was made by closing the peers that had waited longest.
    let mut oldest = &silent[0];
    oldest
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(oldest.read(&mut [0u8; 1]).unwrap(), 0);
    let log = server.log();
    assert!(
        log.contains("it sent no request while newer connections kept arriving"),
        "{log}"
    );
    drop(silent);
}

#[test]
fn start_up_refusals_are_one_line() {
    let scratch = hubssh_tests::scratch();
    let state = scratch.path().join("state");
    let err = refused(&state, &["--listen", "0.0.0.0:0", "--auth", "none"]);
    assert!(err.contains("--auth none lets anyone"), "{err}");
    let err = refused(
        &state,
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "openssh",
            "--sshd",
            "/nonexistent/sshd",
        ],
    );
    assert!(err.contains("/nonexistent/sshd"), "{err}");
}
