//! `ssh hub 'cmd'` through every route: stdout, stderr and the exit code come back intact, and
//! stdin reaches the command with its EOF.

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::scenarios;

fn exec_round_trip(backend: Backend, route: Route) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    scenarios::exec_round_trip(&env);
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

#[test]
fn embedded_exec_through_hubssh_proxy_on_a_socket() {
    exec_round_trip(Backend::Embedded, Route::HubsshOnSocket);
}

/// A command's bytes reach the shell as they were sent: file names need not be UTF-8 (rsync and
/// `scp -O` put them in the command line).
#[test]
fn a_command_that_is_not_utf8_arrives_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let _server = env.start(backend, Route::Hubssh, &[]);
        let name = env
            .path()
            .join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1"));
        let mut command = b"touch ".to_vec();
        command.extend_from_slice(name.as_os_str().as_bytes());
        let out = hubssh_tests::procs::output(
            env.ssh()
                .arg("hub")
                .arg(std::ffi::OsStr::from_bytes(&command)),
            30,
        );
        assert!(out.status.success(), "{backend:?}: {}", out.stderr_text());
        assert!(name.exists(), "{backend:?}: no file {name:?}");
    }
}

/// The scheduling policy in a process's stat line (field 41): 3 is SCHED_BATCH, 0 SCHED_OTHER.
fn policy_in(stat: &str) -> String {
    // The name in parentheses may hold spaces: count from its closing one (field 2).
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
    after_name
        .split(' ')
        .nth(41 - 3)
        .expect("field 41")
        .to_owned()
}

/// hubsshd, every thread of it and the sessions it starts run under the normal policy, or under
/// SCHED_BATCH with `--sched batch` (a relay sharing a CPU with sshd is then not woken for every
/// packet).
#[test]
fn hubsshd_and_its_sessions_run_under_the_chosen_scheduling_policy() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        for (extra, policy) in [(&[][..], "0"), (&["--sched", "batch"][..], "3")] {
            let env = Env::new();
            let server = env.start(backend, Route::Hubssh, extra);
            let out = env.ssh_run("cat /proc/self/stat", 30);
            assert!(out.status.success(), "{backend:?}: {}", out.stderr_text());
            let what = format!("{backend:?} {extra:?}");
            assert_eq!(policy_in(&out.stdout_text()), policy, "{what}: the session");
            let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
            for task in tasks {
                // A blocking-pool thread may end between the listing and the read.
                let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
                    continue;
                };
                assert_eq!(policy_in(&stat), policy, "{what}: hubsshd's thread {stat}");
            }
        }
    }
}

/// `ssh -X` (ForwardX11 in a config meant for another host, often): no X11 forwarding on either
/// backend, and ssh says so at once; the command runs as without it.
#[test]
fn x11_forwarding_is_refused_and_the_command_runs() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let _server = env.start(backend, Route::Hubssh, &[]);
        let out = hubssh_tests::procs::output(
            env.ssh().env("DISPLAY", ":0").args([
                "-X",
                "-o",
                "LogLevel=INFO",
                "hub",
                "echo ran; exit 3",
            ]),
            30,
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{backend:?}: {}",
            out.stderr_text()
        );
        assert_eq!(out.stdout_text(), "ran\n", "{backend:?}");
        assert!(
            out.stderr_text().contains("X11 forwarding request failed"),
            "{backend:?}: ssh was not told: {}",
            out.stderr_text()
        );
    }
}
