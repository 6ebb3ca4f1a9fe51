//! Throughput and connect-time benchmark: the same work through each route in one run, with the
//! ratios to the direct route (ssh to sshd over loopback TCP, no tunnel: the limit).
//!
//! Routes: (a) ssh -> sshd on loopback TCP; (b) ssh -> `hubssh proxy` -> hubsshd (WebSocket) ->
//! `sshd -i`; (c) ssh -> websocat -> hubsshd -> `sshd -i` (what users run today); (d) ssh ->
//! `hubssh proxy` -> hubsshd's embedded SSH server. Then SFTP put/get through (b) and (d), and
//! hubsshd's memory per idle session on each backend.
//!
//! Then, when the hub test venvs exist (`scripts/hub-venv --baseline`), the same through a real
//! JupyterHub: (h) ssh -> `hubssh proxy` -> configurable-http-proxy -> jupyter-server-proxy ->
//! hubsshd (embedded, from the jupyter-hubssh wheel) beside (w) ssh -> websocat -> the same hub ->
//! jupyter-sshd-proxy's sshd (what users run today), with ratios to (w). Needs root (it creates
//! the hub's users).
//! Build with `cargo build --release --workspace`, run `target/release/hubssh-bench [MiB] [runs]
//! [hub | sftp | memory | ROUTES]` (`hub`: the routes through the hub only; `sftp`: SFTP through
//! b and d only; `memory`: hubsshd's memory per idle session only; ROUTES, e.g. `bd`: the direct
//! route and those, nothing else). Besides MiB/s it prints
//! the machine's CPU seconds per GiB moved. The direct and tunnel routes take turns run by run,
//! so drift in the machine's speed during a run weighs on all of them alike.
//!
//! `HUBSSH_BENCH_PIN=C,S` (e.g. `0,1`) runs the client side (this program, ssh and its
//! ProxyCommand) on CPU C and the server side (sshd, hubsshd and what they start, the hub) on
//! CPU S, as if they were two machines: the scheduler then no longer decides the last percents.
//! `HUBSSH_BENCH_CIPHER` sets the cipher every route uses (see [`cipher`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs;

/// The cipher every route uses, so the tunnel is the only difference: by default the one that
/// costs ssh and sshd least CPU per byte (AES-NI), which leaves the tunnel's own cost most in
/// view. `HUBSSH_BENCH_CIPHER` picks another, e.g. `chacha20-poly1305@openssh.com`, what
/// OpenSSH negotiates when nothing is configured.
fn cipher() -> &'static str {
    static CIPHER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CIPHER.get_or_init(|| {
        let Ok(wanted) = std::env::var("HUBSSH_BENCH_CIPHER") else {
            return "aes128-gcm@openssh.com".to_owned();
        };
        let known = Command::new("ssh")
            .args(["-Q", "cipher"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == wanted))
            .unwrap_or(false);
        if !known {
            eprintln!("hubssh-bench: HUBSSH_BENCH_CIPHER={wanted:?}: not a cipher this ssh has (see `ssh -Q cipher`)");
            std::process::exit(2);
        }
        wanted
    })
}

/// Seconds one transfer may take before it counts as hung, is killed, and the run goes on
/// (`HUBSSH_BENCH_LIMIT` overrides).
fn limit() -> u64 {
    std::env::var("HUBSSH_BENCH_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

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
    /// Transfers (either way) that failed or passed [`limit`]; the medians leave them out.
    lost: usize,
    runs: usize,
    /// `ssh hub true` runs that failed or hung; the connect median leaves them out.
    connects_lost: usize,
    /// Each transfer's seconds in run order (`None`: failed or hung), to pair runs that took
    /// turns with another route's.
    up_secs: Vec<Option<f64>>,
    down_secs: Vec<Option<f64>>,
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

/// Ctrl-C (or SIGTERM) ends the benchmark together with what it started. Its ssh commands run in
/// process groups of their own (so that a watchdog ends each with its ProxyCommand), out of the
/// terminal's reach: they get SIGKILL by group, the servers SIGTERM (for a hubsshd the terminal's
/// Ctrl-C reached too, a second signal: it exits at once, and its sshd see their pipes close).
fn end_children_on_interrupt() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [wake, woken] = fds;
    INTERRUPTED.store(woken, std::sync::atomic::Ordering::Relaxed);
    extern "C" fn on_signal(signal: libc::c_int) {
        let fd = INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the byte lives on this stack.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only writes to a pipe (exec resets it in children).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        while unsafe { libc::read(wake, (&mut byte as *mut u8).cast(), 1) } != 1 {}
        eprintln!("hubssh-bench: interrupted; ending the commands and servers it started");
        let children: Vec<u32> = procs::children(std::process::id())
            .iter()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        for &pid in &children {
            if procs::leads_own_group(pid) {
                procs::kill_group(pid);
            }
        }
        for &pid in &children {
            // SAFETY: a plain syscall; these are our unreaped children.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        std::process::exit(128 + i32::from(byte));
    });
}

/// Where the signal handler of [`end_children_on_interrupt`] writes.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The CPUs of `HUBSSH_BENCH_PIN=C,S`: the client side's, then the server side's.
fn pinning() -> Option<(usize, usize)> {
    let v = std::env::var("HUBSSH_BENCH_PIN").ok()?;
    let cpus = v
        .split_once(',')
        .and_then(|(c, s)| Some((c.trim().parse().ok()?, s.trim().parse().ok()?)))
        .filter(|&(c, s): &(usize, usize)| c.max(s) < libc::CPU_SETSIZE as usize);
    if cpus.is_none() {
        eprintln!("hubssh-bench: HUBSSH_BENCH_PIN={v:?}: give two CPU numbers, e.g. 0,1");
        std::process::exit(2);
    }
    cpus
}

/// Pins the calling thread to `cpu`; the processes it starts from then on inherit that.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set, filled through libc's own macros, and the
    // call only reads it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    assert!(
        ok,
        "HUBSSH_BENCH_PIN: cannot pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `start` (which starts a server) on the server side's CPU when pinned, then comes back.
fn as_server<T>(start: impl FnOnce() -> T) -> T {
    let Some((client, server)) = pinning() else {
        return start();
    };
    pin_to(server);
    let started = start();
    pin_to(client);
    started
}

fn main() {
    end_children_on_interrupt();
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // `hub`: the hub routes only; `sftp`: SFTP through b and d only; letters (`abd`): those
    // routes only, without SFTP, memory or hub.
    let only = args.next();
    let sftp_only = only.as_deref() == Some("sftp");
    println!(
        "hubssh-bench: {mib} MiB each way, cipher {}, median of {runs} runs",
        cipher()
    );
    match pinning() {
        Some((client, server)) => {
            pin_to(client);
            println!("pinned: client side on CPU {client}, server side on CPU {server}\n");
        }
        None => println!(),
    }
    if only.as_deref() == Some("hub") {
        through_the_hub(mib, runs);
        return;
    }
    if only.as_deref() == Some("memory") {
        memory_per_session(50);
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
        direct = Some(as_server(|| DirectSshd::start(&env)));
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
        servers.push(as_server(|| env.start(backend, route, &[])));
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
    report_paired(&all);
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
    let hub = as_server(hub::hub);
    let (alice, carol) = ("hubssh-alice", "hubssh-carol-baseline");
    as_server(|| hub.start_server(alice));
    hub::ensure_system_user(carol);
    // One environment per route, so the routes can take turns run by run.
    let (baseline_env, x_env, ours, y_env) = (Env::new(), Env::new(), Env::new(), Env::new());
    // jupyter-sshd-proxy's sshd reads the user's own authorized_keys: w's key and x's.
    let ssh_dir = std::path::PathBuf::from(format!("/home/{carol}/.ssh"));
    std::fs::create_dir_all(&ssh_dir).expect("carol's .ssh");
    let keys: String = [&baseline_env, &x_env]
        .iter()
        .map(|env| std::fs::read_to_string(&env.authorized_keys).expect("keys"))
        .collect();
    std::fs::write(ssh_dir.join("authorized_keys"), keys).expect("keys");
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
    as_server(|| hub.start_server(carol));

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
    baseline_env.write_config_as(carol, &websocat_to(&carol_token, carol));
    ours.write_keyless_config(alice, &hubssh_to(&token, alice));
    x_env.write_config_as(carol, &hubssh_to(&carol_token, carol));
    y_env.write_keyless_config(alice, &websocat_to(&token, alice));
    let figures = measure(
        &[
            (
                "w  ssh -> websocat -> hub -> jupyter-sshd-proxy",
                &baseline_env,
            ),
            ("h  ssh -> hubssh -> hub -> hubsshd (embedded)", &ours),
            ("x  ssh -> hubssh -> hub -> jupyter-sshd-proxy", &x_env),
            ("y  ssh -> websocat -> hub -> hubsshd (embedded)", &y_env),
        ],
        mib,
        runs,
    );
    println!("\nthrough a real JupyterHub (ratios to w):");
    report(&figures);
    report_paired(&figures);
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
    // One batch; it counts only if it exits 0 and leaves the whole file at `landed`.
    let sftp = |batch: String, landed: &std::path::Path| {
        let file = env.path().join("batch");
        std::fs::write(&file, batch).expect("batch");
        let mut failed = None;
        let time = timed(|| {
            let run = procs::output_within(
                Command::new("sftp")
                    .arg("-F")
                    .arg(&env.config)
                    .args(["-c", cipher(), "-b"])
                    .arg(&file)
                    .arg("hub")
                    .process_group(0),
                limit(),
            );
            let size = || std::fs::metadata(landed).map_or(0, |m| m.len());
            failed = match run {
                Ok(done) if !done.status.success() => {
                    Some(format!("failed: {}", done.stderr_text().trim()))
                }
                Ok(_) if size() != (mib as u64) << 20 => {
                    Some(format!("left {} of {} bytes", size(), mib << 20))
                }
                Ok(_) => None,
                Err(_) => Some(format!("hung: killed after {} s", limit())),
            };
        });
        match failed {
            None => Some(time),
            Some(why) => {
                eprintln!("  sftp through {name}: {why}");
                None
            }
        }
    };
    let put: Vec<_> = (0..runs)
        .map(|_| {
            sftp(
                format!("put {} {}\n", src.display(), there.display()),
                &there,
            )
        })
        .collect();
    let get: Vec<_> = (0..runs)
        .map(|_| {
            sftp(
                format!("get {} {}\n", there.display(), back.display()),
                &back,
            )
        })
        .collect();
    figures(name, mib, &put, &get, f64::NAN)
}

/// Figures from timed transfers of `mib` each (`None`: failed or hung): medians of rates and of
/// CPU per GiB over the transfers that finished.
fn figures(
    name: &'static str,
    mib: usize,
    up: &[Option<Timed>],
    down: &[Option<Timed>],
    connect_ms: f64,
) -> Figures {
    let done = |v: &[Option<Timed>]| v.iter().flatten().copied().collect::<Vec<_>>();
    let (up_done, down_done) = (done(up), done(down));
    let per_gib = |v: &[Timed]| median(v.iter().map(|t| t.cpu).collect()) * 1024.0 / mib as f64;
    let rate = |v: &[Timed]| mib as f64 / median(v.iter().map(|t| t.secs).collect());
    Figures {
        name,
        up: rate(&up_done),
        down: rate(&down_done),
        up_cpu: per_gib(&up_done),
        down_cpu: per_gib(&down_done),
        connect_ms,
        lost: up.len() + down.len() - up_done.len() - down_done.len(),
        runs: up.len(),
        connects_lost: 0,
        up_secs: up.iter().map(|t| t.map(|t| t.secs)).collect(),
        down_secs: down.iter().map(|t| t.map(|t| t.secs)).collect(),
    }
}

/// Speed ratios of `route` to `base`, run by run (runs that took turns share the machine's
/// state): the median and the middle half, or `None` when fewer than 4 pairs finished.
fn paired(route: &[Option<f64>], base: &[Option<f64>]) -> Option<(f64, f64, f64)> {
    let mut ratios: Vec<f64> = route
        .iter()
        .zip(base)
        .filter_map(|(r, b)| Some(b.as_ref()? / r.as_ref()?))
        .collect();
    if ratios.len() < 4 {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.25), at(0.75)))
}

/// Under a table: each route's ratios to the first, paired run by run (4 runs or more).
fn report_paired(all: &[Figures]) {
    let Some(base) = all.first().filter(|base| base.runs >= 4) else {
        return;
    };
    let show = |p: Option<(f64, f64, f64)>| match p {
        Some((mid, lo, hi)) => format!("{mid:.2} (middle half {lo:.2}-{hi:.2})"),
        None => "-".into(),
    };
    for f in &all[1..] {
        println!(
            "  {} paired run by run with {}: up {}, down {}",
            &f.name[..1],
            &base.name[..1],
            show(paired(&f.up_secs, &base.up_secs)),
            show(paired(&f.down_secs, &base.down_secs))
        );
    }
}

/// A figure for the table: `-` where no transfer finished.
fn cell(v: f64, width: usize, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:>width$.decimals$}")
    } else {
        format!("{:>width$}", "-")
    }
}

/// Under a table, the routes whose transfers or connects did not all finish.
fn report_lost(all: &[Figures]) {
    for f in all {
        if f.lost > 0 {
            println!(
                "  {}: {} of {} transfers failed or hung (killed after {} s); left out above",
                f.name,
                f.lost,
                2 * f.runs,
                limit()
            );
        }
        if f.connects_lost > 0 {
            println!(
                "  {}: {} connects failed or hung; left out above",
                f.name, f.connects_lost
            );
        }
    }
}

fn report_sftp(all: &[Figures]) {
    let Some(base) = all.first() else { return };
    println!(
        "\n{:<44} {:>9} {:>9} {:>7} {:>7} {:>12} {:>8}",
        "sftp (connect included)",
        "put MiB/s",
        "get MiB/s",
        format!("put/{}", &base.name[..1]),
        format!("get/{}", &base.name[..1]),
        "cpu put s/GiB",
        "cpu get"
    );
    for f in all {
        println!(
            "{:<44} {} {} {} {} {} {}",
            f.name,
            cell(f.up, 9, 0),
            cell(f.down, 9, 0),
            cell(f.up / base.up, 7, 2),
            cell(f.down / base.down, 7, 2),
            cell(f.up_cpu, 12, 2),
            cell(f.down_cpu, 8, 2)
        );
    }
    report_lost(all);
}

/// hubsshd's resident memory growth per idle SSH session, for each backend.
fn memory_per_session(sessions: usize) {
    println!();
    for (backend, name) in [
        (Backend::Embedded, "embedded"),
        (Backend::OpenSsh, "openssh"),
    ] {
        eprintln!("measuring memory with {sessions} idle sessions ({name}) ...");
        let env = Env::new();
        let server = as_server(|| env.start(backend, Route::Hubssh, &[]));
        if connect_once(&env).is_none() {
            println!("hubsshd ({name}) RSS: not measured, ssh to it failed");
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let before = rss_kib(server.pid());
        let idle: Vec<_> = (0..sessions)
            .map(|_| procs::background(env.ssh().args(["-N", "hub"])))
            .collect();
        if !procs::wait_until(60, || server.logins() > sessions) {
            println!("hubsshd ({name}) RSS: not measured, not every idle session logged in");
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let after = rss_kib(server.pid());
        println!(
            "hubsshd ({name}) RSS: {before} KiB before, {after} KiB with {sessions} idle sessions: {:.0} KiB per session",
            (after.saturating_sub(before)) as f64 / sessions as f64
        );
        drop(idle);
    }
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
        // Accepts the host key once; a route broken from the start shows in its transfers.
        if connect_once(env).is_none() {
            eprintln!("  ssh hub true through {name} failed or hung");
        }
    }
    for round in 0..runs {
        for (i, (name, env)) in subjects.iter().enumerate() {
            eprintln!("round {}/{runs}: {name}", round + 1);
            up[i].push(upload(name, env, bytes));
            down[i].push(download(name, env, bytes));
        }
    }
    let mut connects_lost = vec![0; n];
    for _ in 0..runs.max(5) {
        for (i, (name, env)) in subjects.iter().enumerate() {
            match connect_once(env) {
                Some(ms) => connect[i].push(ms),
                None => {
                    eprintln!("  ssh hub true through {name} failed or hung");
                    connects_lost[i] += 1;
                }
            }
        }
    }
    subjects
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Figures {
            connects_lost: connects_lost[i],
            ..figures(name, mib, &up[i], &down[i], median(connect[i].clone()))
        })
        .collect()
}

/// Milliseconds `ssh hub true` takes; `None` if it fails or hangs.
fn connect_once(env: &Env) -> Option<f64> {
    let start = Instant::now();
    let mut ssh = env.ssh();
    ssh.args(["-c", cipher(), "hub", "true"]).process_group(0);
    match procs::output_within(&mut ssh, limit().min(60)) {
        Ok(done) if done.status.success() => Some(start.elapsed().as_secs_f64() * 1000.0),
        _ => None,
    }
}

/// Kills a transfer's ssh, with its process group (the ProxyCommand too), when it passes
/// [`limit`]: a hung route then ends with an error instead of stalling the benchmark.
struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn arm(child: &Child) -> Watchdog {
        let pid = child.id();
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let fired = matches!(
                stopped.recv_timeout(Duration::from_secs(limit())),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if fired {
                // The transfer is stuck, so the child is not reaped yet; should the limit run
                // out just as ssh is reaped, its group is gone and nothing happens.
                procs::kill_group(pid);
            }
            fired
        });
        Watchdog { stop, thread }
    }

    /// Stops the watch; whether it had fired.
    fn disarm(self) -> bool {
        drop(self.stop);
        self.thread.join().unwrap_or(false)
    }
}

/// A transfer in progress: ssh running REMOTE, past its `go` line, under a watchdog.
struct Transfer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    dog: Watchdog,
}

impl Transfer {
    /// Starts `ssh -c <cipher> hub REMOTE` and waits for the `go` line.
    fn start(env: &Env, remote: &str, stdin: Stdio) -> Result<Transfer, String> {
        let mut child = env
            .ssh()
            .args(["-c", cipher(), "hub", remote])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        let dog = Watchdog::arm(&child);
        let out = BufReader::with_capacity(1 << 20, child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut transfer = Transfer { child, out, dog };
        match transfer.out.read_line(&mut line) {
            Ok(_) if line == "go\n" => Ok(transfer),
            _ => Err(transfer
                .end(Err(format!("did not start (first line {line:?})")))
                .unwrap_err()),
        }
    }

    /// Waits for ssh (killing it first if the transfer failed, so it cannot block on output
    /// nobody reads). The first failure wins: a hang, then the transfer's own error, then ssh's
    /// exit status.
    fn end(mut self, moved: Result<(), String>) -> Result<(), String> {
        if moved.is_err() {
            procs::kill_tree(&mut self.child);
        }
        let status = self.child.wait();
        if self.dog.disarm() {
            return Err(format!("hung: killed after {} s", limit()));
        }
        moved?;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("ssh failed: {status}")),
            Err(e) => Err(format!("ssh: {e}")),
        }
    }
}

/// Runs one transfer; `None` (with the reason on stderr) if it failed or hung.
fn transfer(
    route: &str,
    what: &str,
    env: &Env,
    remote: &str,
    stdin: Stdio,
    work: impl FnOnce(&mut Transfer) -> Result<(), String>,
) -> Option<Timed> {
    eprintln!("  {what}");
    // The clock starts at the `go` line: connecting is measured on its own.
    let mut t = match Transfer::start(env, remote, stdin) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("  {what} through {route}: {e}");
            return None;
        }
    };
    let mut outcome = Ok(());
    let time = timed(|| {
        let moved = work(&mut t);
        outcome = t.end(moved);
    });
    match outcome {
        Ok(()) => Some(time),
        Err(e) => {
            eprintln!("  {what} through {route}: {e}");
            None
        }
    }
}

/// Time to push `bytes` into `cat > /dev/null` on the far side.
fn upload(route: &str, env: &Env, bytes: usize) -> Option<Timed> {
    let what = format!("upload {} MiB", bytes >> 20);
    let remote = "echo go; cat > /dev/null";
    let buf = vec![0x5au8; 1 << 20];
    transfer(route, &what, env, remote, Stdio::piped(), |t| {
        let mut stdin = t.child.stdin.take().expect("stdin");
        for _ in 0..bytes / buf.len() {
            stdin.write_all(&buf).map_err(|e| format!("upload: {e}"))?;
        }
        Ok(())
    })
}

/// Time to pull `bytes` from `head -c` on the far side.
fn download(route: &str, env: &Env, bytes: usize) -> Option<Timed> {
    let what = format!("download {} MiB", bytes >> 20);
    let remote = format!("echo go; head -c {bytes} /dev/zero");
    let mut buf = vec![0u8; 1 << 20];
    transfer(route, &what, env, &remote, Stdio::null(), |t| {
        let mut total = 0;
        loop {
            match t.out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => return Err(format!("download: {e}")),
            }
        }
        if total == bytes {
            Ok(())
        } else {
            Err(format!("short download: {total} of {bytes} bytes"))
        }
    })
}

/// The median; NaN for no values.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(all: &[Figures]) {
    let Some(base) = all.first() else { return };
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>7} {:>7} {:>9} {:>10} {:>10}",
        "route",
        "up MiB/s",
        "down MiB/s",
        "connect ms",
        format!("up/{}", &base.name[..1]),
        format!("down/{}", &base.name[..1]),
        format!("connect/{}", &base.name[..1]),
        "cpu up s/GiB",
        "cpu down"
    );
    for f in all {
        println!(
            "{:<44} {} {} {} {} {} {} {} {}",
            f.name,
            cell(f.up, 9, 0),
            cell(f.down, 9, 0),
            cell(f.connect_ms, 10, 0),
            cell(f.up / base.up, 7, 2),
            cell(f.down / base.down, 7, 2),
            cell(f.connect_ms / base.connect_ms, 9, 2),
            cell(f.up_cpu, 12, 2),
            cell(f.down_cpu, 8, 2)
        );
    }
    report_lost(all);
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
