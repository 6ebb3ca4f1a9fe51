//! Sessions come and go without leaving anything behind, and shutdown ends what is left.

use std::process::Stdio;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs;

/// Child processes of `pid` (sshd -i and whatever it started).
fn children(pid: u32) -> Vec<String> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
    tasks
        .unwrap_or_default()
        .iter()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn sessions_leave_nothing_behind(backend: Backend, route: Route) {
    let env = Env::new();
    let server = env.start(backend, route, &[]);
    for i in 0..3 {
        assert_eq!(
            env.ssh_run(&format!("echo {i}"), 30).ok().stdout_text(),
            format!("{i}\n")
        );
    }
    let clean = procs::wait_until(10, || children(server.pid()).is_empty());
    assert!(
        clean,
        "processes left after the sessions ended: {:?}\n{}",
        children(server.pid()),
        server.log()
    );
}

#[test]
fn embedded_sessions_leave_nothing_behind() {
    sessions_leave_nothing_behind(Backend::Embedded, Route::Hubssh);
    sessions_leave_nothing_behind(Backend::Embedded, Route::Raw);
}

#[test]
fn openssh_sessions_leave_nothing_behind() {
    sessions_leave_nothing_behind(Backend::OpenSsh, Route::Hubssh);
    sessions_leave_nothing_behind(Backend::OpenSsh, Route::Raw);
}

#[test]
fn shutdown_ends_sessions_and_removes_the_socket() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        shutdown_ends_sessions(backend);
    }
}

fn shutdown_ends_sessions(backend: Backend) {
    let env = Env::new();
    let mut server = env.start(backend, Route::Raw, &["--shutdown-grace", "1"]);
    let socket = server.socket.clone().unwrap();
    let live = env.spawn_ssh(&["hub", "sleep 60"], Stdio::null());
    server.wait_for_login();
    server.signal(15);
    let status = server
        .wait_exit(10)
        .expect("hubsshd exits after SIGTERM and the grace period");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(!socket.exists(), "the unix socket is removed on exit");
    let out = procs::wait(live, 10, "the session cut by shutdown");
    assert!(!out.status.success());
}

/// hubsshd starts itself once more to set mimalloc's commit-on-demand option (see its main.rs):
/// the process serving is then the one that was started, under its own name, with the option.
#[test]
fn hubsshd_runs_with_its_allocator_option_under_its_own_name() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let pid = server.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"MIMALLOC_ARENA_EAGER_COMMIT=0"),
        "hubsshd runs without the allocator option"
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "hubsshd", "the process keeps its name");
    assert_eq!(env.ssh_run("echo ok", 30).ok().stdout_text(), "ok\n");
}
