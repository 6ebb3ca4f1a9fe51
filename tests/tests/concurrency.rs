//! Many sessions at once on one hubsshd, each moving its own data both ways: every byte comes
//! back to the session that sent it.

use std::io::Write;
use std::process::Stdio;

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
