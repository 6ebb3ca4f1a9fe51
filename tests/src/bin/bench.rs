//! Throughput and connect-time benchmark: the same work through each route in one run, with the
//! ratios to the direct route (ssh to sshd over loopback TCP, no tunnel: the limit).
//!
//! Routes: (a) ssh -> sshd on loopback TCP; (b) ssh -> `hubssh proxy` -> hubsshd (WebSocket) ->
//! `sshd -i`; (c) ssh -> websocat -> hubsshd -> `sshd -i` (what users run today); (d) ssh ->
//! `hubssh proxy` -> hubsshd's embedded SSH server. Then SFTP put/get through (b) and (d), and
//! hubsshd's memory per idle session on the embedded backend.
//!
//! Then, when the hub test venvs exist (`scripts/hub-venv --baseline`), the same through a real
//! JupyterHub: (h) ssh -> `hubssh proxy` -> configurable-http-proxy -> jupyter-server-proxy ->
//! hubsshd (embedded, from the jupyter-hubssh wheel) beside (w) ssh -> websocat -> the same hub ->
//! jupyter-sshd-proxy's sshd (what users run today), with ratios to (w). Needs root (it creates
//! the hub's users).
//! Build with `cargo build --release --workspace`, run `target/release/hubssh-bench [MiB] [runs]
//! [hub | sftp | ROUTES]` (`hub`: the routes through the hub only; `sftp`: SFTP through b and d
//! only; ROUTES, e.g. `bd`: the direct route and those, nothing else). Besides MiB/s it prints
//! the machine's CPU seconds per GiB moved. The direct and tunnel routes take turns run by run,
//! so drift in the machine's speed during a run weighs on all of them alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs;

/// The cipher every route uses, so the tunnel is the only difference.
const CIPHER: &str = "aes128-gcm@openssh.com";

struct Figures {
    name: &'static str,
    up: f64,
    down: f64,
    /// CPU seconds the whole machine spent per GiB moved (every process on the route, the
    /// benchmark's own reading and writing included): steadier than MiB/s on a shared VM, and
    /// what bounds throughput when the route is CPU-bound.
    up_cpu: f64,
    down_cpu: f64,
    connect_ms: f64,
}

/// One timed transfer: wall seconds and machine-wide CPU seconds.
#[derive(Clone, Copy)]
struct Timed {
    secs: f64,
    cpu: f64,
}

/// CPU seconds the machine has been busy since boot (all cores; idle, iowait and the time the
/// hypervisor stole left out).
fn cpu_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100 on Linux.
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    busy / 100.0
}

/// Runs `work`, returning its wall and CPU seconds.
fn timed(work: impl FnOnce()) -> Timed {
    let (cpu0, start) = (cpu_busy(), Instant::now());
    work();
    Timed {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu_busy() - cpu0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // `hub`: the hub routes only; `sftp`: SFTP through b and d only; letters (`abd`): those
    // routes only, without SFTP, memory or hub.
    let only = args.next();
    let sftp_only = only.as_deref() == Some("sftp");
    println!("hubssh-bench: {mib} MiB each way, cipher {CIPHER}, median of {runs} runs\n");
    if only.as_deref() == Some("hub") {
        through_the_hub(mib, runs);
        return;
    }
    // Which routes run, and what is measured on them.
    let wanted = |name: &str, route: Route| match only.as_deref() {
        None => true,
        Some("sftp") => route == Route::Hubssh,
        Some(letters) => letters.contains(&name[..1]),
    };
    let (transfers, sftp_too) = (!sftp_only, only.is_none() || sftp_only);

    // Every route's server runs at once and the runs take turns (a, b, ..., a, b, ...), so a
    // machine that speeds up or slows down during the run weighs on every route alike.
    let mut subjects: Vec<(&'static str, Env)> = Vec::new();
    let mut direct = None;
    if transfers {
        let env = Env::new();
        direct = Some(DirectSshd::start(&env));
        subjects.push(("a  ssh -> sshd (loopback TCP)", env));
    }
    let mut servers = Vec::new();
    let mut sftp = Vec::new();
    for (name, backend, route) in [
        (
            "b  ssh -> hubssh -> hubsshd -> sshd -i",
            Backend::OpenSsh,
            Route::Hubssh,
        ),
        (
            "c  ssh -> websocat -> hubsshd -> sshd -i",
            Backend::OpenSsh,
            Route::Websocat,
        ),
        (
            "d  ssh -> hubssh -> hubsshd (embedded)",
            Backend::Embedded,
            Route::Hubssh,
        ),
    ] {
        if !wanted(name, route) {
            continue;
        }
        if route == Route::Websocat && hubssh_tests::which("websocat").is_none() {
            println!("(skipping {name}: websocat is not on PATH; pip install websocat)");
            continue;
        }
        let env = Env::new();
        servers.push(env.start(backend, route, &[]));
        if route == Route::Hubssh && sftp_too {
            sftp.push(measure_sftp(name, &env, env.path(), mib, runs));
        }
        if transfers {
            subjects.push((name, env));
        }
    }
    let refs: Vec<_> = subjects.iter().map(|(name, env)| (*name, env)).collect();
    let all = measure(&refs, mib, runs);
    drop((servers, direct));
    report(&all);
    report_sftp(&sftp);
    if only.is_some() {
        return;
    }
    memory_per_session(50);
    through_the_hub(mib, runs);
}

/// Routes through a real JupyterHub: hubssh + jupyter-hubssh against websocat + jupyter-sshd-proxy.
fn through_the_hub(mib: usize, runs: usize) {
    use hubssh_tests::hub;
    let (venv, baseline) = (hub::venv(), hub::baseline_venv());
    if !venv.join("bin/hubsshd").exists() || !baseline.join("bin/jupyterhub-singleuser").exists() {
        println!("\n(skipping the hub routes: run scripts/hub-venv --baseline first)");
        return;
    }
    let hub = hub::hub();
    let (alice, carol) = ("hubssh-alice", "hubssh-carol-baseline");
    hub.start_server(alice);
    hub::ensure_system_user(carol);
    let baseline_env = Env::new();
    // jupyter-sshd-proxy's sshd reads the user's own authorized_keys.
    let ssh_dir = std::path::PathBuf::from(format!("/home/{carol}/.ssh"));
    std::fs::create_dir_all(&ssh_dir).expect("carol's .ssh");
    std::fs::copy(
        &baseline_env.authorized_keys,
        ssh_dir.join("authorized_keys"),
    )
    .expect("keys");
    procs::output(
        Command::new("chown")
            .args(["-R", &format!("{carol}:{carol}")])
            .arg(&ssh_dir),
        10,
    )
    .ok();
    procs::output(
        Command::new("chmod").args(["-R", "go-rwx"]).arg(&ssh_dir),
        10,
    )
    .ok();
    hub.start_server(carol);

    let ours = Env::new();
    let (token, _) = hub.token(alice, None, ours.path());
    let (carol_token, _) = hub.token(carol, None, baseline_env.path());
    let websocat = hubssh_tests::which("websocat").expect("websocat on PATH");
    let hubssh_to = |token: &std::path::Path, user: &str| {
        format!(
            "{} proxy --token-file {} {}",
            hubssh_tests::bin("hubssh").display(),
            token.display(),
            hub.sshd_url(user)
        )
    };
    // The websocat line users paste today (the token on its command line is theirs, not ours).
    // -H takes several values: the URL goes before it.
    let websocat_to = |token: &std::path::Path, user: &str| {
        let secret = std::fs::read_to_string(token).expect("token");
        format!(
            "{} --binary {} -H 'Authorization: token {}'",
            websocat.display(),
            hub.sshd_url(user).replace("http://", "ws://"),
            secret.trim()
        )
    };

    // w and h are the comparison; x and y swap the client to show which half makes a difference.
    baseline_env.write_config_as(carol, &hubssh_to(&carol_token, carol));
    let x = measure_one(
        "x  ssh -> hubssh -> hub -> jupyter-sshd-proxy",
        &baseline_env,
        mib,
        runs,
    );
    baseline_env.write_config_as(carol, &websocat_to(&carol_token, carol));
    let w = measure_one(
        "w  ssh -> websocat -> hub -> jupyter-sshd-proxy",
        &baseline_env,
        mib,
        runs,
    );
    ours.write_keyless_config(alice, &websocat_to(&token, alice));
    let y = measure_one(
        "y  ssh -> websocat -> hub -> hubsshd (embedded)",
        &ours,
        mib,
        runs,
    );
    ours.write_keyless_config(alice, &hubssh_to(&token, alice));
    let h = measure_one(
        "h  ssh -> hubssh -> hub -> hubsshd (embedded)",
        &ours,
        mib,
        runs,
    );
    let figures = vec![w, h, x, y];
    println!("\nthrough a real JupyterHub (ratios to w):");
    report(&figures);
    let far = |user: &str| std::path::PathBuf::from(format!("/home/{user}"));
    let sftp = vec![
        measure_sftp(
            "w  websocat -> jupyter-sshd-proxy (internal-sftp)",
            &baseline_env,
            &far(carol),
            mib,
            runs,
        ),
        measure_sftp(
            "h  hubssh -> hubsshd (embedded)",
            &ours,
            &far(alice),
            mib,
            runs,
        ),
    ];
    report_sftp(&sftp);
    let _ = std::fs::remove_file(far(carol).join("sftp-there.bin"));
    let _ = std::fs::remove_file(far(alice).join("sftp-there.bin"));
}

/// SFTP put and get MiB/s through one route.
/// `far` is a directory the server's user can write.
fn measure_sftp(
    name: &'static str,
    env: &Env,
    far: &std::path::Path,
    mib: usize,
    runs: usize,
) -> Figures {
    eprintln!("measuring sftp through {name} ...");
    let src = env.path().join("sftp-src.bin");
    hubssh_tests::data::file(&src, mib << 20, 5);
    let (there, back) = (far.join("sftp-there.bin"), env.path().join("sftp-back.bin"));
    let sftp = |batch: String| {
        let file = env.path().join("batch");
        std::fs::write(&file, batch).expect("batch");
        timed(|| {
            procs::output(
                Command::new("sftp")
                    .arg("-F")
                    .arg(&env.config)
                    .args(["-c", CIPHER, "-b"])
                    .arg(&file)
                    .arg("hub"),
                300,
            )
            .ok();
        })
    };
    let put: Vec<Timed> = (0..runs)
        .map(|_| sftp(format!("put {} {}\n", src.display(), there.display())))
        .collect();
    let get: Vec<Timed> = (0..runs)
        .map(|_| sftp(format!("get {} {}\n", there.display(), back.display())))
        .collect();
    figures(name, mib, &put, &get, 0.0)
}

/// Figures from timed transfers of `mib` each: medians of rates and of CPU per GiB.
fn figures(
    name: &'static str,
    mib: usize,
    up: &[Timed],
    down: &[Timed],
    connect_ms: f64,
) -> Figures {
    let per_gib = |v: &[Timed]| median(v.iter().map(|t| t.cpu).collect()) * 1024.0 / mib as f64;
    let rate = |v: &[Timed]| mib as f64 / median(v.iter().map(|t| t.secs).collect());
    Figures {
        name,
        up: rate(up),
        down: rate(down),
        up_cpu: per_gib(up),
        down_cpu: per_gib(down),
        connect_ms,
    }
}

fn report_sftp(all: &[Figures]) {
    let Some(base) = all.first() else { return };
    println!(
        "\n{:<44} {:>9} {:>9} {:>7} {:>7} {:>12} {:>8}",
        "sftp (connect included)",
        "put MiB/s",
        "get MiB/s",
        "put/b",
        "get/b",
        "cpu put s/GiB",
        "cpu get"
    );
    for f in all {
        println!(
            "{:<44} {:>9.0} {:>9.0} {:>7.2} {:>7.2} {:>12.2} {:>8.2}",
            f.name,
            f.up,
            f.down,
            f.up / base.up,
            f.down / base.down,
            f.up_cpu,
            f.down_cpu
        );
    }
}

/// hubsshd's resident memory growth per idle SSH session (embedded backend).
fn memory_per_session(sessions: usize) {
    eprintln!("measuring memory with {sessions} idle sessions ...");
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    env.ssh_run("true", 60).ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = rss_kib(server.pid());
    let idle: Vec<_> = (0..sessions)
        .map(|_| procs::background(env.ssh().args(["-N", "hub"])))
        .collect();
    let logged_in = procs::wait_until(60, || {
        server.log().matches("accepted public key").count() > sessions
    });
    assert!(logged_in, "not every idle session logged in");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = rss_kib(server.pid());
    println!(
        "\nhubsshd (embedded) RSS: {before} KiB before, {after} KiB with {sessions} idle sessions: {:.0} KiB per session",
        (after.saturating_sub(before)) as f64 / sessions as f64
    );
    drop(idle);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn measure(subjects: &[(&'static str, &Env)], mib: usize, runs: usize) -> Vec<Figures> {
    let bytes = mib << 20;
    let n = subjects.len();
    let (mut up, mut down, mut connect) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for (name, env) in subjects {
        eprintln!("ready: {name}");
        env.ssh_run("true", 60).ok(); // accept the host key once
    }
    for round in 0..runs {
        for (i, (name, env)) in subjects.iter().enumerate() {
            eprintln!("round {}/{runs}: {name}", round + 1);
            up[i].push(upload(env, bytes));
            down[i].push(download(env, bytes));
        }
    }
    for _ in 0..runs.max(5) {
        for (i, (_, env)) in subjects.iter().enumerate() {
            let start = Instant::now();
            procs::output(env.ssh().args(["-c", CIPHER, "hub", "true"]), 60).ok();
            connect[i].push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    subjects
        .iter()
        .enumerate()
        .map(|(i, (name, _))| figures(name, mib, &up[i], &down[i], median(connect[i].clone())))
        .collect()
}

/// One route on its own.
fn measure_one(name: &'static str, env: &Env, mib: usize, runs: usize) -> Figures {
    measure(&[(name, env)], mib, runs).remove(0)
}

/// Starts `ssh -c CIPHER hub REMOTE`, waits for the `go` line, and returns the child.
fn start(env: &Env, remote: &str, stdin: Stdio) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = env
        .ssh()
        .args(["-c", CIPHER, "hub", remote])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ssh");
    let mut out = BufReader::with_capacity(1 << 20, child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("go line");
    assert_eq!(line, "go\n", "unexpected first line from the remote");
    (child, out)
}

/// Time to push `bytes` into `cat > /dev/null` on the far side.
fn upload(env: &Env, bytes: usize) -> Timed {
    eprintln!("  upload {} MiB", bytes >> 20);
    let (mut child, _out) = start(env, "echo go; cat > /dev/null", Stdio::piped());
    let mut stdin = child.stdin.take().expect("stdin");
    let buf = vec![0x5au8; 1 << 20];
    timed(|| {
        for _ in 0..bytes / buf.len() {
            stdin.write_all(&buf).expect("upload");
        }
        drop(stdin);
        assert!(child.wait().expect("wait").success(), "upload failed");
    })
}

/// Time to pull `bytes` from `head -c` on the far side.
fn download(env: &Env, bytes: usize) -> Timed {
    eprintln!("  download {} MiB", bytes >> 20);
    let remote = format!("echo go; head -c {bytes} /dev/zero");
    let (mut child, mut out) = start(env, &remote, Stdio::null());
    let mut buf = vec![0u8; 1 << 20];
    timed(|| {
        let mut total = 0;
        loop {
            let n = out.read(&mut buf).expect("download");
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(child.wait().expect("wait").success(), "download failed");
        assert_eq!(total, bytes, "short download");
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(all: &[Figures]) {
    let Some(base) = all.first() else { return };
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>7} {:>7} {:>9} {:>10} {:>10}",
        "route",
        "up MiB/s",
        "down MiB/s",
        "connect ms",
        "up/a",
        "down/a",
        "connect/a",
        "cpu up s/GiB",
        "cpu down"
    );
    for f in all {
        println!(
            "{:<44} {:>9.0} {:>9.0} {:>10.0} {:>7.2} {:>7.2} {:>9.2} {:>12.2} {:>8.2}",
            f.name,
            f.up,
            f.down,
            f.connect_ms,
            f.up / base.up,
            f.down / base.down,
            f.connect_ms / base.connect_ms,
            f.up_cpu,
            f.down_cpu
        );
    }
}

/// OpenSSH sshd listening on a loopback port: the no-tunnel baseline.
struct DirectSshd(Child);

impl DirectSshd {
    fn start(env: &Env) -> DirectSshd {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let key = env.path().join("direct_host_key");
        procs::output(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
            20,
        )
        .ok();
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sshd is needed for the direct baseline");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f", "none", "-p", &port.to_string(), "-h"])
            .arg(&key)
            .arg("-o")
            .arg(format!(
                "AuthorizedKeysFile={}",
                env.authorized_keys.display()
            ))
            .args([
                "-o",
                "ListenAddress=127.0.0.1",
                "-o",
                "PidFile=none",
                "-o",
                "PasswordAuthentication=no",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let up = procs::wait_until(10, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "sshd did not start listening on port {port}");
        env.write_direct_config(port);
        DirectSshd(child)
    }
}

impl Drop for DirectSshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
