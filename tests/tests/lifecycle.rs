//! Sessions come and go without leaving anything behind, and shutdown ends what is left.

use std::io::Write;
use std::process::{Command, Stdio};

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs::{self, children};
use hubssh_tests::server::Hubsshd;

/// How many processes under `pid`, at any depth, run the program `name`.
fn descendants_named(pid: u32, name: &str) -> usize {
    descendant_pids_named(pid, name).len()
}

/// The processes under `pid`, at any depth, that run the program `name`.
fn descendant_pids_named(pid: u32, name: &str) -> Vec<u32> {
    children(pid)
        .iter()
        .filter_map(|child| child.parse::<u32>().ok())
        .flat_map(|child| {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            let mut found = descendant_pids_named(child, name);
            if comm.trim() == name {
                found.push(child);
            }
            found
        })
        .collect()
}

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
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
    server.assert_nothing_left(10, "processes left after the sessions ended");
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

/// SIGHUP (the terminal of a standalone hubsshd closed) is a clean shutdown like SIGTERM, even
/// the moment hubsshd says it listens: status 0, the socket file gone.
#[test]
fn sighup_at_once_is_a_clean_shutdown() {
    let env = Env::new();
    let mut server = env.start(Backend::Embedded, Route::Raw, &[]);
    let socket = server.socket.clone().unwrap();
    server.signal(1);
    let status = server.wait_exit(10).expect("hubsshd exits after SIGHUP");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(!socket.exists(), "the unix socket is removed on exit");
}

/// Started with SIGHUP ignored (`nohup hubsshd ... &`, then the terminal closes), hubsshd keeps
/// it ignored: it goes on serving, and SIGTERM still stops it cleanly.
#[test]
fn under_nohup_a_hangup_is_ignored() {
    let env = Env::new();
    let (cmd, socket) = Hubsshd::command(
        env.path(),
        Backend::Embedded,
        Route::Raw.listen(),
        &env.authorized_keys,
        &[],
    );
    let mut server = Hubsshd::spawn(under_nohup(&cmd), socket.clone());
    server.signal(1);
    assert!(
        server.wait_exit(2).is_none(),
        "hubsshd stopped on a SIGHUP it was started ignoring:\n{}",
        server.log()
    );
    server.signal(15);
    let status = server.wait_exit(10).expect("hubsshd exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        !socket.unwrap().exists(),
        "the unix socket is removed on exit"
    );
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

/// Ctrl-C at hubsshd's terminal signals its whole process group: sessions still get the grace
/// period (sshd, in that group, would otherwise end them at once).
#[test]
fn ctrl_c_at_its_terminal_leaves_sessions_their_grace_period() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let (mut cmd, socket) = Hubsshd::command(
            env.path(),
            backend,
            Route::Raw.listen(),
            &env.authorized_keys,
            &["--shutdown-grace", "30"],
        );
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut server = Hubsshd::spawn(cmd, socket);
        env.write_config(&env.proxy_command(Route::Raw, &server));
        let live = env.spawn_ssh(&["hub", "sleep 2; echo finished"], Stdio::null());
        server.wait_for_login();
        let group = format!("-{}", server.pid());
        let _ = Command::new("kill").args(["-INT", "--", &group]).status();
        let out = procs::wait(live, 30, "the session in the grace period");
        assert_eq!(
            out.stdout_text(),
            "finished\n",
            "{backend:?}: {}\n{}",
            out.stderr_text(),
            server.log()
        );
        let status = server
            .wait_exit(30)
            .expect("hubsshd exits once its sessions are done");
        assert!(status.success(), "{backend:?}: {status}\n{}", server.log());
    }
}

/// hubsshd started with `var` (name, value) in its environment, `Host hub` pointed at it.
fn start_with_var(env: &Env, backend: Backend, var: Option<(&str, &str)>) -> Hubsshd {
    let (mut cmd, socket) = Hubsshd::command(
        env.path(),
        backend,
        Route::Hubssh.listen(),
        &env.authorized_keys,
        &[],
    );
    if let Some((name, value)) = var {
        cmd.env(name, value);
    }
    let server = Hubsshd::spawn(cmd, socket);
    env.write_config(&env.proxy_command(Route::Hubssh, &server));
    server
}

/// `NAME=VALUE` entries of a process's environment.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

const OPTION: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// hubsshd starts itself once more to set mimalloc's commit-on-demand option (server/src/
/// allocator.rs): the process serving is the one started, with its name and arguments and the
/// option, and no session inherits the option.
#[test]
fn hubsshd_sets_its_allocator_option_for_itself_only() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let server = start_with_var(&env, backend, None);
        let pid = server.pid();
        assert!(
            environ(pid).contains(&format!("{OPTION}=0")),
            "{backend:?}: hubsshd runs without the allocator option"
        );
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim(), "hubsshd", "the process keeps its name");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        assert_eq!(
            argv0,
            hubssh_tests::bin("hubsshd").as_os_str().as_encoded_bytes(),
            "argv[0] is kept"
        );
        let session_env = env.ssh_run("env", 30).ok().stdout_text();
        assert!(
            !session_env.contains(OPTION) && !session_env.contains("HUBSSHD_"),
            "{backend:?}: a session inherited hubsshd's own setting:\n{session_env}"
        );
    }
}

/// A value of the option set by whoever starts hubsshd is theirs: kept, and passed on to
/// sessions like the rest of the environment (the embedded backend passes it on).
#[test]
fn an_allocator_option_set_by_the_admin_is_kept() {
    let env = Env::new();
    let server = start_with_var(&env, Backend::Embedded, Some((OPTION, "1")));
    let vars = environ(server.pid());
    assert!(
        vars.contains(&format!("{OPTION}=1")),
        "the admin's value is kept"
    );
    assert!(
        !vars
            .iter()
            .any(|v| v.starts_with("HUBSSHD_SET_ALLOCATOR_OPTION")),
        "hubsshd did not start itself again"
    );
    let session_env = env.ssh_run("env", 30).ok().stdout_text();
    assert!(
        session_env.contains(&format!("{OPTION}=1")),
        "sessions get the admin's environment"
    );
}

/// hubsshd with `backend`, its command line passed through `wrap`, and `Host hub` through hubssh.
fn start_wrapped(env: &Env, backend: Backend, wrap: fn(&Command) -> Command) -> Hubsshd {
    let (cmd, socket) = Hubsshd::command(
        env.path(),
        backend,
        Route::Hubssh.listen(),
        &env.authorized_keys,
        &[],
    );
    let server = Hubsshd::spawn(wrap(&cmd), socket);
    env.write_config(&env.proxy_command(Route::Hubssh, &server));
    server
}

/// `cmd` started as `nohup` starts it: SIGHUP ignored.
fn under_nohup(cmd: &Command) -> Command {
    let mut nohup = Command::new("nohup");
    nohup.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => nohup.env(k, v),
            None => nohup.env_remove(k),
        };
    }
    nohup
}

/// hubsshd whose log reader has gone (its parent died, a log collector restarted) goes on
/// serving, and SIGTERM still stops it: a log line it cannot write is dropped, not a failure.
#[test]
fn a_broken_log_pipe_ends_neither_sessions_nor_shutdown() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let mut server = start_wrapped(&env, backend, with_a_log_reader_that_leaves);
        // Its reader takes the `listening on` line and exits: every later line meets EPIPE.
        let out = env.ssh_run("echo still serving", 30);
        assert_eq!(
            out.stdout_text(),
            "still serving\n",
            "{backend:?}: {}",
            out.stderr_text()
        );
        server.signal(15);
        let status = server.wait_exit(10);
        assert!(
            status.is_some_and(|s| s.success()),
            "{backend:?}: hubsshd with a broken log pipe did not stop on SIGTERM: {status:?}"
        );
    }
}

/// `cmd` run with its stderr read by a `head -n 1` that passes the first line on and exits.
fn with_a_log_reader_that_leaves(cmd: &std::process::Command) -> std::process::Command {
    let mut wrapped = std::process::Command::new("bash");
    wrapped
        .arg("-c")
        .arg(r#"exec "$0" "$@" 2> >(head -n 1 >&2)"#)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
}

/// A terminal session whose client vanishes (the terminal window closed, ssh killed, the network
/// gone) hangs up its shell, as OpenSSH does: nothing stays behind on the server. Also when what
/// was typed last is still waiting for a program that does not read it (a paste into `sleep`).
#[test]
fn a_vanished_client_hangs_up_its_shell() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        for typing in [Typing::Command, Typing::AheadOfIt] {
            let env = Env::new();
            let server = env.start(backend, Route::Hubssh, &[]);
            vanish_from_a_terminal(&env, &server, &format!("{backend:?}, {typing:?}"), typing);
        }
    }
}

/// Under `nohup` (hubsshd started with SIGHUP ignored), sessions still get their hang-up: what
/// hubsshd was started ignoring is not what the shells it starts ignore.
#[test]
fn under_nohup_a_vanished_client_still_hangs_up_its_shell() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let server = start_wrapped(&env, backend, under_nohup);
        vanish_from_a_terminal(
            &env,
            &server,
            &format!("{backend:?} under nohup"),
            Typing::None,
        );
    }
}

/// How `sleep 300` comes to run in the terminal session of [`vanish_from_a_terminal`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Typing {
    /// Typed into the shell.
    Command,
    /// Typed, then more lines than the terminal holds, which `sleep` never reads.
    AheadOfIt,
    /// Not typed: the session's command (`ssh -tt hub 'sleep 300'`).
    None,
}

/// Runs `sleep 300` in a terminal session, kills the client, and checks that nothing is left
/// on the server.
fn vanish_from_a_terminal(env: &Env, server: &Hubsshd, what: &str, typing: Typing) {
    let args: &[&str] = match typing {
        Typing::None => &["-tt", "hub", "sleep 300"],
        _ => &["-tt", "hub"],
    };
    let mut ssh = env.spawn_ssh(args, Stdio::piped());
    server.wait_for_login();
    // A program running in the foreground, as when a laptop's lid closes mid-command.
    let mut stdin = ssh.stdin.take().expect("stdin");
    if typing != Typing::None {
        stdin.write_all(b"sleep 300\n").expect("type a command");
    }
    let sleeping = procs::wait_until(10, || descendants_named(server.pid(), "sleep") > 0);
    assert!(sleeping, "{what}: the typed command did not start");
    let sleep = descendant_pids_named(server.pid(), "sleep");
    let typist = (typing == Typing::AheadOfIt).then(|| {
        std::thread::spawn(move || {
            // Complete lines, which the terminal keeps until its input queue is full.
            let lines = b"y\n".repeat(1 << 20);
            let _ = stdin.write_all(&lines);
        })
    });
    if typist.is_some() {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    procs::kill_tree(&mut ssh);
    let _ = ssh.wait();
    if let Some(typist) = typist {
        let _ = typist.join();
    }
    server.assert_nothing_left(
        15,
        &format!("{what}: left behind after the client vanished"),
    );
    // Not just gone from under hubsshd (an orphan that ignored its hang-up moves to init).
    let ended = procs::wait_until(5, || !sleep.iter().any(|&pid| running(pid)));
    assert!(
        ended,
        "{what}: the foreground job {sleep:?} outlived its terminal"
    );
}

/// A command writing more than the client takes, when the client vanishes: its output pipe is
/// closed, so it gets SIGPIPE at its next write (as with sshd) instead of blocking for ever.
/// Likewise an SFTP download cut off mid-file leaves nothing behind.
#[test]
fn a_vanished_client_stops_a_command_blocked_on_its_output() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let server = env.start(backend, Route::Hubssh, &[]);
        // stdout not read: the channel's window shuts and `yes` blocks writing.
        let mut ssh = env.spawn_ssh(&["hub", "exec yes"], Stdio::null());
        let running = procs::wait_until(10, || descendants_named(server.pid(), "yes") > 0);
        assert!(running, "{backend:?}: the command did not start");
        std::thread::sleep(std::time::Duration::from_millis(500));
        procs::kill_tree(&mut ssh);
        let _ = ssh.wait();
        server.assert_nothing_left(
            15,
            &format!("{backend:?}: left behind after the client vanished"),
        );
    }
}

/// hubsshd's threads named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_vanished_client_ends_its_sftp_session() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let server = env.start(backend, Route::Hubssh, &[]);
        let big = env.path().join("big");
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(1 << 30))
            .expect("a sparse 1 GiB file");
        let batch = env.path().join("batch");
        std::fs::write(&batch, format!("get {} /dev/null\n", big.display())).unwrap();
        let mut sftp = env.sftp(&batch);
        std::os::unix::process::CommandExt::process_group(&mut sftp, 0);
        let sftp = sftp
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sftp");
        let group = format!("-{}", sftp.id());
        let started = procs::wait_until(10, || {
            threads_named(server.pid(), "hubsshd-sftp") > 0
                || descendants_named(server.pid(), "sshd") > 1
        });
        assert!(started, "{backend:?}: no SFTP session");
        // The laptop sleeps mid-download (the window shuts), then its connection is gone.
        let _ = Command::new("kill").args(["-STOP", "--", &group]).status();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let ended = procs::wait_until(15, || threads_named(server.pid(), "hubsshd-sftp") == 0);
        assert!(
            ended,
            "{backend:?}: the SFTP session's thread is still there\n{}",
            server.log()
        );
        server.assert_nothing_left(
            15,
            &format!("{backend:?}: left behind by a cut SFTP session"),
        );
        drop(sftp);
    }
}

/// A peer that sends `greeting` and then says nothing.
fn silent_peer(server: &Hubsshd, greeting: &[u8]) -> std::net::TcpStream {
    let mut peer = std::net::TcpStream::connect(&server.addr).expect("connect");
    peer.write_all(greeting).expect("send");
    peer
}

/// Reads until the peer's end; panics if it has not come within `secs`.
fn read_to_close(peer: &mut std::net::TcpStream, secs: u64, what: &str) {
    peer.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
        .expect("timeout");
    let mut sink = Vec::new();
    let ended = std::io::Read::read_to_end(peer, &mut sink);
    let still_connected = ended.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(!still_connected, "{what}: still connected after {secs} s");
}

/// A peer that goes silent before logging in is disconnected at the end of the login grace
/// period (`--login-grace`, sshd's LoginGraceTime), so it cannot hold a connection slot: one that
/// never finishes its version line, and one that stops in the key exchange.
#[test]
fn a_silent_peer_is_disconnected_after_the_login_grace_period() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let server = env.start(backend, Route::Hubssh, &["--login-grace", "2"]);
        let start = std::time::Instant::now();
        let mut unfinished = silent_peer(&server, b"SSH-");
        let mut in_kex = silent_peer(&server, b"SSH-2.0-OpenSSH_9.9\r\n");
        read_to_close(
            &mut unfinished,
            20,
            &format!("{backend:?}, version line unfinished"),
        );
        read_to_close(
            &mut in_kex,
            20,
            &format!("{backend:?}, silent in the key exchange"),
        );
        assert!(
            start.elapsed() >= std::time::Duration::from_secs(1),
            "{backend:?}: cut before the grace period"
        );
        assert_eq!(
            env.ssh_run("echo served", 30).ok().stdout_text(),
            "served\n"
        );
    }
}

/// Shutdown does not wait on peers stalled before SSH: one that said nothing at all, one halfway
/// through an HTTP request, one that never finished its SSH greeting.
#[test]
fn a_silent_peer_does_not_hold_up_shutdown() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let mut server = env.start(backend, Route::Hubssh, &["--shutdown-grace", "1"]);
        let _mute = silent_peer(&server, b"");
        let _half = silent_peer(&server, b"GET /user/test/sshd/ HTTP/1.1\r\nHost: x\r\n");
        let mut greeting = silent_peer(&server, b"SSH-");
        // Connections are accepted in order: once the last one hears the server's banner, all
        // three are being served.
        let mut banner = [0u8; 4];
        std::io::Read::read_exact(&mut greeting, &mut banner).expect("the server's banner");
        assert_eq!(&banner, b"SSH-");
        server.signal(15);
        let status = server.wait_exit(10);
        assert!(
            status.is_some_and(|s| s.success()),
            "{backend:?}: not stopped 10 s after SIGTERM with silent peers: {status:?}\n{}",
            server.log()
        );
    }
}

/// A second SIGTERM during the grace period ends hubsshd at once, with status 1.
#[test]
fn a_second_signal_ends_the_grace_period() {
    let env = Env::new();
    let mut server = env.start(
        Backend::Embedded,
        Route::Hubssh,
        &["--shutdown-grace", "60"],
    );
    let live = env.spawn_ssh(&["hub", "sleep 60"], Stdio::null());
    server.wait_for_login();
    server.signal(15);
    let first_seen = procs::wait_until(10, || server.log().contains("shutting down"));
    assert!(
        first_seen,
        "the first signal was not taken:\n{}",
        server.log()
    );
    assert!(server.wait_exit(0).is_none(), "the grace period is on");
    server.signal(15);
    let status = server.wait_exit(5);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "a second signal ends hubsshd at once\n{}",
        server.log()
    );
    let out = procs::wait(live, 10, "the session cut by the second signal");
    assert!(!out.status.success());
}
