//! Test fixtures for the end-to-end suite: start `hubsshd`, write an ssh config whose
//! `ProxyCommand` goes through the tunnel, and run the real OpenSSH tools against it.
//!
//! Map: [`procs`] runs commands with deadlines; [`server`] starts hubsshd; [`client`] holds the
//! client key, known_hosts and ssh config; [`data`] makes and compares test files; [`scenarios`]
//! are the checks run on every route; [`hub`] runs a real JupyterHub; [`network`] puts TLS and
//! an HTTP proxy in front of it.

pub mod client;
pub mod data;
pub mod hub;
pub mod network;
pub mod procs;
pub mod scenarios;
pub mod server;

use std::path::PathBuf;

/// The directory holding the built `hubssh` and `hubsshd`: `$HUBSSH_BIN_DIR`, or the cargo
/// profile directory this test binary was built in (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUBSSH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one of our binaries, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A private scratch directory under the cargo target directory (not /tmp: sshd's StrictModes
/// refuses key files below world-writable directories).
pub fn scratch() -> tempfile::TempDir {
    let root = bin_dir()
        .parent()
        .map(|p| p.join("tmp"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&root).expect("scratch root");
    tempfile::Builder::new()
        .prefix("hubssh-e2e-")
        .tempdir_in(root)
        .expect("scratch dir")
}

/// Finds a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Name of the user the tests run as (the only user sshd lets in).
pub fn user_name() -> String {
    procs::output(std::process::Command::new("id").arg("-un"), 10)
        .stdout_text()
        .trim()
        .to_owned()
}
