//! The harness's own promise: a command's deadline bounds the whole wait, its output included.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use hubssh_tests::procs;

#[test]
fn a_finished_command_comes_back_with_its_outputs_and_status() {
    let done = procs::output(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        10,
    );
    assert_eq!(done.status.code(), Some(3));
    assert_eq!(done.stdout_text(), "out\n");
    assert_eq!(done.stderr_text(), "err\n");
}

#[test]
fn output_held_open_by_a_leftover_process_is_overdue_not_a_hang() {
    // sh exits at once; the sleep it leaves behind holds both pipes for a minute.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo started >&2; sleep 60 & exit 0"])
        .process_group(0);
    let start = Instant::now();
    let overdue = procs::output_within(&mut cmd, 2).expect_err("the output never ended");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(String::from_utf8_lossy(&overdue.stderr), "started\n");
}

#[test]
fn a_command_past_its_deadline_is_killed_with_what_it_said() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo waiting >&2; exec sleep 60"]);
    let start = Instant::now();
    let overdue = procs::output_within(&mut cmd, 1).expect_err("it never finished");
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(String::from_utf8_lossy(&overdue.stderr), "waiting\n");
}
