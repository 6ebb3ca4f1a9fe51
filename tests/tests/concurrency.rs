//! Many sessions at once on one hubsshd, each moving its own data both ways: every byte comes
//! back to the session that sent it. And one channel whose consumer lags holds up neither the
//! other channels of its connection nor, once its reader reads, itself.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::{data, procs};

/// Bytes each session echoes through `cat`.
const PER_SESSION: usize = 2 << 20;

#[test]
fn embedded_fifty_concurrent_sessions_keep_their_bytes() {
    concurrent(Backend::Embedded, 50);
}

#[test]
fn openssh_twenty_concurrent_sessions_keep_their_bytes() {
    concurrent(Backend::OpenSsh, 20);
}

fn concurrent(backend: Backend, sessions: usize) {
    let env = Env::new();
    let _server = env.start(backend, Route::Hubssh, &[]);
    let sessions: Vec<_> = (0..sessions)
        .map(|i| {
            let mut child = env.spawn_ssh(&["hub", "cat"], Stdio::piped());
            let payload = data::bytes(PER_SESSION, i as u64 + 100);
            let mut stdin = child.stdin.take().unwrap();
            let sent = payload.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&sent));
            (child, writer, payload)
        })
        .collect();
    for (i, (child, writer, payload)) in sessions.into_iter().enumerate() {
        let out = procs::wait(child, 120, &format!("session {i}"));
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "session {i}: {}", out.stderr_text());
        assert!(
            out.stdout == payload,
            "session {i}: {} bytes back, not the {} sent",
            out.stdout.len(),
            payload.len()
        );
    }
}

#[test]
fn embedded_a_slow_reader_holds_up_nothing() {
    slow_reader(Backend::Embedded);
}

#[test]
fn openssh_a_slow_reader_holds_up_nothing() {
    slow_reader(Backend::OpenSsh);
}

/// `ssh hub cat < big | slow-reader`: cat's input arrives faster than its output can leave, so
/// the bytes sent to it pile up on the server. The channel window has to stop the sender there:
/// meanwhile another command on the same connection runs, and once the reader reads, every byte
/// comes back. (The embedded server used to re-open the window on receipt; the connection then
/// waited on this one channel, and for good, as cat waited on its output.)
fn slow_reader(backend: Backend) {
    let env = Env::new();
    let _server = env.start(backend, Route::Hubssh, &[]);
    let (_master, ctl_opt) = env.control_master();
    let payload = data::bytes(48 << 20, 9);

    let mut child = env.spawn_ssh(&["-o", &ctl_opt, "hub", "cat"], Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap(); // not read yet: the slow reader
    let sent = payload.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent));
    // Time for the upload to fill every buffer on its way.
    std::thread::sleep(Duration::from_secs(3));

    let other = procs::output(
        env.ssh().args(["-o", &ctl_opt, "hub", "echo still here"]),
        30,
    );
    assert_eq!(
        other.stdout_text().trim(),
        "still here",
        "{}",
        other.stderr_text()
    );

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut back = Vec::new();
        let _ = tx.send(stdout.read_to_end(&mut back).map(|_| back));
    });
    let Ok(back) = rx.recv_timeout(Duration::from_secs(120)) else {
        procs::kill_tree(&mut child);
        panic!("cat's output stopped for good once its reader lagged");
    };
    let back = back.expect("read ssh's output");
    writer.join().unwrap().expect("write ssh's input");
    let out = procs::wait(child, 30, "ssh hub cat");
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        back == payload,
        "{} bytes back, not the {} sent",
        back.len(),
        payload.len()
    );
}
