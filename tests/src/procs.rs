//! Running commands with a deadline, so a hang fails the test instead of stalling the suite.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics with both outputs unless the command exited 0.
    pub fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "command failed with {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout_text(),
            self.stderr_text()
        );
        self
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing its output; kills it and panics after `secs`.
pub fn output(cmd: &mut Command, secs: u64) -> Finished {
    cmd.stdin(Stdio::null());
    let child = spawn_captured(cmd);
    wait(child, secs, &format!("{cmd:?}"))
}

/// Spawns `cmd` with stdout and stderr piped.
pub fn spawn_captured(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Waits for a child with captured stdout/stderr; kills it and panics after `secs`.
pub fn wait(child: Child, secs: u64, what: &str) -> Finished {
    wait_within(child, secs).unwrap_or_else(|overdue| {
        panic!(
            "{what} did not finish within {secs} s; stderr: {}",
            String::from_utf8_lossy(&overdue.stderr)
        )
    })
}

/// A command killed for passing its deadline (or whose output something it started still held
/// open at the deadline), with what it had said on stderr.
#[derive(Debug)]
pub struct Overdue {
    pub stderr: Vec<u8>,
}

/// Like [`output`], but a command that passes `secs` is killed and returned as [`Overdue`]
/// instead of panicking (for the benchmark, which reports a hung route and goes on).
pub fn output_within(cmd: &mut Command, secs: u64) -> Result<Finished, Overdue> {
    cmd.stdin(Stdio::null());
    wait_within(spawn_captured(cmd), secs)
}

/// Waits for a child with captured stdout/stderr; kills it after `secs`. The deadline covers the
/// output too: a descendant that outlives the child (a ProxyCommand that stays behind its ssh)
/// and keeps the pipes open makes it overdue, instead of a wait with no end.
pub fn wait_within(mut child: Child, secs: u64) -> Result<Finished, Overdue> {
    let start = Instant::now();
    let leads_group = leads_group(&child);
    let out = child.stdout.take().map(Drained::start);
    let err = child.stderr.take().map(Drained::start);
    let deadline = start + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            kill_tree(&mut child);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let drained = |d: &Option<Drained>| d.as_ref().is_none_or(Drained::finished);
    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
    // After a kill, a descendant that escaped it may still hold the pipes: wait for it briefly.
    let outputs_ended = wait_until(left.max(2), || drained(&out) && drained(&err));
    let taken = |d: Option<Drained>| d.map(Drained::take).unwrap_or_default();
    match status {
        Some(status) if outputs_ended => Ok(Finished {
            status,
            stdout: taken(out),
            stderr: taken(err),
            elapsed: start.elapsed(),
        }),
        _ => {
            // The child is reaped, but its group's id stays taken while any member lives: this
            // reaches only what the child left behind.
            if leads_group {
                kill_group(child.id());
            }
            Err(Overdue { stderr: taken(err) })
        }
    }
}

/// Kills `child`, and its whole process group if it leads one (as the benchmark's commands do,
/// so that a ProxyCommand does not outlive its ssh). Call it before reaping the child.
pub fn kill_tree(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill();
}

/// Whether `child` (not yet reaped) leads its own process group, as the benchmark's commands do.
fn leads_group(child: &Child) -> bool {
    leads_own_group(child.id())
}

/// Whether process `pid` (alive or not yet reaped) leads its own process group.
pub fn leads_own_group(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: a plain syscall with no memory involved.
    unsafe { libc::getpgid(pid) == pid }
}

/// SIGKILL to the process group `pid` leads. Safe while `pid` is not reaped (no other process can
/// have its id), or while its group still has members (the group keeps the id taken); if `pid` led
/// no group, there is no group of that id and nothing happens.
pub fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: a plain syscall with no memory involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// One output of a child, read to its end by a thread; what came so far can be taken at any time.
struct Drained {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Drained {
    fn start(mut r: impl Read + Send + 'static) -> Self {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        });
        Drained { buf, thread }
    }

    fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    fn take(self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

/// Collects the lines `r` produces into a shared log, calling `each` on every line first (for
/// example to spot a readiness line). Runs until `r` ends.
pub fn collect_lines(
    r: impl Read + Send + 'static,
    mut each: impl FnMut(&str) + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            each(&line);
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// The child processes of `pid`, from every one of its threads.
pub fn children(pid: u32) -> Vec<String> {
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

/// Polls `check` until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// A child killed when dropped, for background helpers (servers, `ssh -N` forwards).
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` in the background with its output discarded.
pub fn background(cmd: &mut Command) -> Background {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Background(child)
}

/// `python3 -m http.server` serving `dir` on a free loopback port, ready; stopped when dropped.
pub fn http_server(dir: &std::path::Path) -> (Background, u16) {
    let port = free_port();
    let server = background(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir),
    );
    assert!(wait_port(port, 20), "python3 -m http.server did not start");
    (server, port)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_port(port: u16, secs: u64) -> bool {
    wait_until(secs, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}
