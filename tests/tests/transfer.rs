//! File transfer through the tunnel with the real tools: scp in SFTP mode and legacy `-O`, both
//! ways; `sftp -b` put and get; `rsync -a` of a tree of many small files and one large file.
//! Every copy is compared byte for byte.

use std::path::Path;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::{data, procs};

fn remote(path: &Path) -> String {
    format!("hub:{}", path.display())
}

fn transfers(backend: Backend, route: Route, big: usize) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    let local = env.path().join("local");
    let far = env.path().join("remote");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&far).unwrap();
    let src = local.join("src.bin");
    data::file(&src, 5 << 20, 1);

    for (mode, flag) in [("sftp", None), ("legacy", Some("-O"))] {
        let up = far.join(format!("up-{mode}.bin"));
        let down = local.join(format!("down-{mode}.bin"));
        let mut scp = env.scp();
        scp.args(flag).arg(&src).arg(remote(&up));
        procs::output(&mut scp, 120).ok();
        data::assert_same_file(&src, &up);
        let mut scp = env.scp();
        scp.args(flag).arg(remote(&up)).arg(&down);
        procs::output(&mut scp, 120).ok();
        data::assert_same_file(&src, &down);
    }

    let batch = env.path().join("batch");
    let (put, got) = (far.join("sftp-put.bin"), local.join("sftp-get.bin"));
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            src.display(),
            put.display(),
            put.display(),
            got.display()
        ),
    )
    .unwrap();
    procs::output(&mut env.sftp(&batch), 120).ok();
    data::assert_same_file(&src, &put);
    data::assert_same_file(&src, &got);

    let tree = local.join("tree");
    data::tree(&tree, 300, big);
    let (there, back) = (far.join("tree"), local.join("tree-back"));
    let mut rsync = env.rsync();
    rsync
        .arg(format!("{}/", tree.display()))
        .arg(format!("{}/", remote(&there)));
    procs::output(&mut rsync, 300).ok();
    data::assert_same_tree(&tree, &there);
    let mut rsync = env.rsync();
    rsync
        .arg(format!("{}/", remote(&there)))
        .arg(format!("{}/", back.display()));
    procs::output(&mut rsync, 300).ok();
    data::assert_same_tree(&tree, &back);
}

#[test]
fn embedded_transfers_through_hubssh_proxy() {
    transfers(Backend::Embedded, Route::Hubssh, 64 << 20);
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

// No OpenSSH-backend transfer test through websocat: it hung in 2 of about 6 clean CI runs (scp download
// stalled past its deadline, keepalives notwithstanding) while every other route passed every time; see the
// foundation issue's note. exec through websocat on the OpenSSH backend is still tested in exec.rs.
