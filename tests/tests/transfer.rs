//! File transfer through the tunnel with the real tools: scp in SFTP mode and legacy `-O`, both
//! ways; `sftp -b` put and get; `rsync -a` of a tree of many small files and one large file.
//! Every copy is compared byte for byte.

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::scenarios;

fn transfers(backend: Backend, route: Route, big: usize) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    let far = env.path().join("remote");
    std::fs::create_dir_all(&far).unwrap();
    scenarios::transfers(&env, &far, big);
}

#[test]
fn embedded_transfers_through_hubssh_proxy() {
    transfers(Backend::Embedded, Route::Hubssh, 64 << 20);
}

#[test]
fn embedded_transfers_through_hubssh_proxy_on_a_socket() {
    transfers(Backend::Embedded, Route::HubsshOnSocket, 16 << 20);
}

#[test]
fn embedded_transfers_through_raw_unix_socket() {
    transfers(Backend::Embedded, Route::Raw, 16 << 20);
}

#[test]
fn embedded_transfers_through_websocat() {
    transfers(Backend::Embedded, Route::Websocat, 16 << 20);
}

#[test]
fn openssh_transfers_through_hubssh_proxy() {
    transfers(Backend::OpenSsh, Route::Hubssh, 64 << 20);
}

#[test]
fn openssh_transfers_through_raw_unix_socket() {
    transfers(Backend::OpenSsh, Route::Raw, 16 << 20);
}

/// websocat holds the last frame it read from ssh until ssh writes again; hubsshd's eager SSH
/// keepalives for clients other than hubssh make ssh write, so a transfer stalls seconds, not
/// for good (it hung in about 1 of 6 runs of this file before them).
#[test]
fn openssh_transfers_through_websocat() {
    transfers(Backend::OpenSsh, Route::Websocat, 16 << 20);
}

/// `sftp` lists a directory of more entries than one reply holds (the server hands them out in
/// batches): each name exactly once, with `.` and `..` (`ls -a`).
#[test]
fn a_large_directory_lists_completely() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let _server = env.start(backend, Route::Hubssh, &[]);
        let dir = env.path().join("many");
        std::fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("f{i:04}")), b"").unwrap();
        }
        let batch = env.path().join("batch");
        std::fs::write(&batch, format!("ls -1a {}\n", dir.display())).unwrap();
        let out = hubssh_tests::procs::output(&mut env.sftp(&batch), 60).ok();
        let mut names: Vec<String> = out
            .stdout_text()
            .lines()
            .filter(|l| !l.starts_with("sftp>"))
            .map(|l| l.trim().rsplit('/').next().unwrap().to_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
        want.extend([".".to_owned(), "..".to_owned()]);
        want.sort();
        assert!(
            names == want,
            "{backend:?}: {} names listed, not the 1002 there",
            names.len()
        );
    }
}
