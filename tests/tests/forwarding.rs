//! Forwarding through the embedded server with the real OpenSSH client: the VS Code Remote-SSH
//! pattern (`ssh -T host bash` starting a server, reached through `-L` and `-D`), `-R`, `-L` to a
//! unix socket, agent forwarding with a real ssh-agent, refused targets, and a stuck forward
//! that must not hold up other commands on the same connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs::{self, background, free_port, wait_port};

fn need(program: &str) {
    assert!(
        hubssh_tests::which(program).is_some(),
        "{program} is needed for this test (.ci/run installs it)"
    );
}

fn curl(args: &[&str]) -> String {
    procs::output(
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args),
        30,
    )
    .ok()
    .stdout_text()
}

/// A directory holding one file, to serve over HTTP.
fn site(env: &Env, name: &str, text: &str) -> std::path::PathBuf {
    let dir = env.path().join("site");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    dir
}

#[test]
fn vscode_pattern_bootstrap_then_local_and_dynamic_forwards() {
    need("python3");
    need("curl");
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let site = site(&env, "hello.txt", "hello through the tunnel\n");

    // Like VS Code: `ssh -T host bash` with the bootstrap script on stdin; it starts a server
    // on a random loopback port and prints the port.
    let mut boot = env
        .ssh()
        .args(["-T", "hub", "bash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let script = format!(
        "cd {}\nexec python3 -u -c 'import http.server as h, functools as f; s = h.ThreadingHTTPServer((\"127.0.0.1\", 0), f.partial(h.SimpleHTTPRequestHandler, directory=\".\")); print(\"listening on\", s.server_address[1], flush=True); s.serve_forever()'\n",
        site.display()
    );
    boot.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(boot.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let _boot = procs::Background(boot);

    let local = free_port();
    let _l = background(env.ssh().args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local}:127.0.0.1:{port}"),
        "hub",
    ]));
    assert!(wait_port(local, 20), "-L forward did not come up");
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{local}/hello.txt")]),
        "hello through the tunnel\n"
    );

    let socks = free_port();
    let _d = background(env.ssh().args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-D",
        &socks.to_string(),
        "hub",
    ]));
    assert!(wait_port(socks, 20), "-D forward did not come up");
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    assert_eq!(
        curl(&["--socks5-hostname", &format!("127.0.0.1:{socks}"), &url]),
        "hello through the tunnel\n"
    );
}

#[test]
fn remote_forward_reaches_a_local_server() {
    need("python3");
    need("curl");
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let site = site(&env, "r.txt", "reverse\n");
    let (_http, local) = procs::http_server(&site);
    let remote = free_port();
    let out = procs::output(
        env.ssh().args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("{remote}:127.0.0.1:{local}"),
            "hub",
            &format!(
                "curl -sS --max-time 10 http://127.0.0.1:{remote}/r.txt http://[::1]:{remote}/r.txt"
            ),
        ]),
        60,
    )
    .ok();
    // On both loopback addresses, as sshd listens (`localhost` is ::1 first for many programs).
    assert_eq!(out.stdout_text(), "reverse\nreverse\n");
    // The listener went away with the session.
    assert!(
        procs::wait_until(10, || TcpStream::connect(("127.0.0.1", remote)).is_err()),
        "-R listener outlived its session"
    );
}

/// `-R` from a unix socket on the server (a forwarded GnuPG agent or docker socket): the socket
/// is 0600, reaches the client's target, and goes away with the session; a file already at the
/// path is refused, never replaced, as sshd does by default.
#[test]
fn remote_forward_from_a_unix_socket() {
    need("python3");
    need("curl");
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let site = site(&env, "u.txt", "over a unix socket\n");
    let (_http, local) = procs::http_server(&site);
    let sock = env.path().join("remote.sock");
    // A relative path is taken from the home directory, where the command starts.
    let relative = format!("./hubssh-test-{}.sock", std::process::id());
    let forward = |remote: &str| {
        procs::output(
            env.ssh().args([
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("{}:127.0.0.1:{local}", sock.display()),
                "-R",
                &format!("{relative}:127.0.0.1:{local}"),
                "hub",
                remote,
            ]),
            60,
        )
    };
    let out = forward(&format!(
        "stat -c %a {0}; curl -sS --max-time 10 --unix-socket {0} http://x/u.txt; \
         curl -sS --max-time 10 --unix-socket {relative} http://x/u.txt",
        sock.display()
    ))
    .ok();
    assert_eq!(
        out.stdout_text(),
        "600\nover a unix socket\nover a unix socket\n"
    );
    assert!(
        procs::wait_until(10, || !sock.exists()),
        "the forwarded socket outlived its session"
    );
    let staged: Vec<_> = std::fs::read_dir(env.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hsf"))
        .collect();
    assert!(staged.is_empty(), "left behind: {staged:?}");

    // A file, or a symlink (dangling or not), already at the path is refused and left alone.
    let target = env.path().join("target");
    for what in ["a file", "a symlink"] {
        if what == "a file" {
            std::fs::write(&sock, "mine").unwrap();
        } else {
            std::os::unix::fs::symlink(&target, &sock).unwrap();
        }
        let out = forward("echo ran");
        assert!(!out.status.success(), "a forward over {what} went ahead");
        assert!(
            out.stderr_text().contains("forwarding failed"),
            "{}",
            out.stderr_text()
        );
        assert!(!target.exists(), "the forward followed {what}");
        std::fs::remove_file(&sock).expect("what was there stays");
    }
}

/// TCP sockets on local port `port` that a process still holds (an orphaned socket, closed by
/// its process and finishing its shutdown in the kernel, has inode 0).
fn sockets_held_on_port(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|f| f.len() > 9 && f[1].ends_with(&suffix) && f[9] != "0")
        .count()
}

/// A client that vanishes while a `-R` connection sits idle takes it down with the session: the
/// connection on the server side is closed, and the session's command gets its stdin's end.
#[test]
fn a_vanished_client_closes_its_idle_remote_forwards() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    // On the client's side, a target that accepts and then says nothing.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = target.local_addr().unwrap().port();
    let held = std::thread::spawn(move || target.accept().map(|(conn, _)| conn));
    let remote = free_port();
    let mut ssh = env.spawn_ssh(
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("{remote}:127.0.0.1:{local}"),
            "hub",
            "cat > /dev/null",
        ],
        Stdio::piped(),
    );
    server.wait_for_login();
    assert!(wait_port(remote, 10), "the -R listener did not open");
    let mut idle = TcpStream::connect(("127.0.0.1", remote)).unwrap();
    let _target_side = held
        .join()
        .unwrap()
        .expect("the forward reached its target");
    procs::kill_tree(&mut ssh);
    let _ = ssh.wait();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let ended = idle.read(&mut [0u8; 16]);
    assert!(
        matches!(ended, Ok(0))
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the idle -R connection outlived its session: {ended:?}"
    );
    // Fully closed, not just shut for writing: no process holds a socket on the -R port.
    let closed = procs::wait_until(10, || sockets_held_on_port(remote) == 0);
    assert!(closed, "hubsshd still holds the idle -R connection");
    server.assert_nothing_left(10, "the session's command outlived its client");
}

#[test]
fn local_forward_to_a_unix_socket_and_refused_targets() {
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let sock = env.path().join("app.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"unix-hello\n");
        }
    });
    let local = free_port();
    let _l = background(env.ssh().args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local}:{}", sock.display()),
        "hub",
    ]));
    assert!(wait_port(local, 20), "-L to a unix socket did not come up");
    let mut got = String::new();
    TcpStream::connect(("127.0.0.1", local))
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "unix-hello\n");

    // A target nobody listens on: the channel open fails at once, the client says so.
    let closed = free_port();
    let fwd = free_port();
    let _f = background(
        env.ssh()
            .args(["-N", "-L", &format!("{fwd}:127.0.0.1:{closed}"), "hub"]),
    );
    assert!(wait_port(fwd, 20));
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let n = s
        .read(&mut [0u8; 16])
        .expect("a refused forward closes the local connection, it does not hang");
    assert_eq!(n, 0);
}

#[test]
fn agent_forwarding_lists_the_key() {
    need("ssh-agent");
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let agent_sock = env.path().join("agent.sock");
    let _agent = background(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent_sock),
    );
    assert!(
        procs::wait_until(10, || agent_sock.exists()),
        "ssh-agent did not start"
    );
    procs::output(
        Command::new("ssh-add")
            .arg(&env.key)
            .env("SSH_AUTH_SOCK", &agent_sock),
        20,
    )
    .ok();
    let out = procs::output(
        env.ssh().env("SSH_AUTH_SOCK", &agent_sock).args([
            "-A",
            "hub",
            "ssh-add -l; echo \"sock=$SSH_AUTH_SOCK\"",
        ]),
        30,
    )
    .ok();
    let text = out.stdout_text();
    assert!(
        text.contains("hubssh-test"),
        "the forwarded agent does not list the key: {text}"
    );
    assert!(text.contains("sock=/"), "SSH_AUTH_SOCK not set: {text}");
}

/// `ssh -O OP FLAG SPEC hub` to the control master: adds or cancels a forward on its connection.
fn control(env: &Env, ctl_opt: &str, op: &str, flag: &str, spec: &str) {
    procs::output(
        env.ssh().args(["-o", ctl_opt, "-O", op, flag, spec, "hub"]),
        20,
    )
    .ok();
}

/// A local target and a `-L` forward to it on the control master's connection: the target's
/// listener and the forward's port.
fn forward_to_a_target(env: &Env, ctl_opt: &str) -> (std::net::TcpListener, u16) {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let fwd = free_port();
    let spec = format!("{fwd}:127.0.0.1:{target_port}");
    control(env, ctl_opt, "forward", "-L", &spec);
    (target, fwd)
}

#[test]
fn stuck_forward_does_not_hold_up_the_connection() {
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let (_master, ctl_opt) = env.control_master();

    // A target that accepts and never reads.
    let (target, fwd) = forward_to_a_target(&env, &ctl_opt);
    let held = std::thread::spawn(move || target.accept().map(|(s, _)| s));
    let mut client = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    let _stuck = held.join().unwrap().unwrap();
    // Far more than the target's socket buffers and a 2 MiB channel window: it all piles up
    // on the server's side of this one channel.
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            if client.write_all(&chunk).is_err() {
                break;
            }
        }
        client
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    for i in 0..3 {
        let out = procs::output(
            env.ssh()
                .args(["-o", &ctl_opt, "hub", &format!("echo alive-{i}")]),
            15,
        )
        .ok();
        assert_eq!(out.stdout_text(), format!("alive-{i}\n"));
    }
    drop(writer);
}

#[test]
fn cancelled_remote_forward_stops_listening() {
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let (_master, ctl_opt) = env.control_master();
    let (remote, local) = (free_port(), free_port());
    let spec = format!("{remote}:127.0.0.1:{local}");
    control(&env, &ctl_opt, "forward", "-R", &spec);
    assert!(wait_port(remote, 10), "the -R listener did not open");
    control(&env, &ctl_opt, "cancel", "-R", &spec);
    assert!(
        procs::wait_until(10, || TcpStream::connect(("127.0.0.1", remote)).is_err()),
        "the -R listener is still open after cancel"
    );

    // From a unix socket: cancelling removes the socket file too.
    let sock = env.path().join("cancelled.sock");
    let spec = format!("{}:127.0.0.1:{local}", sock.display());
    control(&env, &ctl_opt, "forward", "-R", &spec);
    assert!(
        procs::wait_until(10, || std::os::unix::net::UnixStream::connect(&sock)
            .is_ok()),
        "the -R socket did not open"
    );
    control(&env, &ctl_opt, "cancel", "-R", &spec);
    assert!(
        procs::wait_until(10, || !sock.exists()),
        "the -R socket is still there after cancel"
    );
}

/// A `-L` connection whose local end went away: ssh closes the channel once its writes to that
/// end fail, and the server must then close its connection to the target, as sshd does, even
/// though the target never closes its own (VS Code's forwards come and go all day).
#[test]
fn a_closed_forward_channel_closes_its_target_connection() {
    for backend in [Backend::Embedded, Backend::OpenSsh] {
        let env = Env::new();
        let _server = env.start(backend, Route::Hubssh, &[]);
        let (_master, ctl_opt) = env.control_master();
        let (target, fwd) = forward_to_a_target(&env, &ctl_opt);
        let local = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
        let (mut far, _) = target.accept().unwrap();
        drop(local);
        // The target talks on and never closes: only the server can end this connection.
        far.set_write_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let chunk = vec![5u8; 64 * 1024];
        let closed = procs::wait_until(30, || match far.write(&chunk) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
        });
        assert!(
            closed,
            "{backend:?}: the target connection stayed open after its channel closed"
        );
    }
}

/// Channels the server closes first (a command that exited, a forward whose target hung up) are
/// forgotten once the client's CLOSE answers: a connection that VS Code keeps for days opens
/// thousands, and every one used to stay in the tables.
#[test]
fn closed_channels_leave_nothing_behind() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &["-v"]);
    let (_master, ctl_opt) = env.control_master();
    for i in 0..3 {
        let out = procs::output(
            env.ssh()
                .args(["-o", &ctl_opt, "hub", &format!("echo {i}")]),
            20,
        );
        assert_eq!(out.stdout_text(), format!("{i}\n"), "{}", out.stderr_text());
    }
    let (target, fwd) = forward_to_a_target(&env, &ctl_opt);
    let local = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    drop(target.accept().unwrap());
    drop(local);

    let closes = || {
        server
            .log()
            .matches("channel closed: what is left open")
            .count()
    };
    assert!(
        procs::wait_until(20, || closes() >= 4),
        "not every channel was forgotten:\n{}",
        server.log()
    );
    let log = server.log();
    let last = log.lines().rfind(|l| l.contains("channel closed")).unwrap();
    assert!(
        last.contains("sessions=0") && last.contains("inboxes=0"),
        "entries left: {last}"
    );
}
