//! What the suite checks on every route, written once: exec, file transfer, an interactive pty.
//! Each takes an [`Env`] whose `Host hub` already reaches a running server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::client::Env;
use crate::{data, procs};

/// `ssh hub 'cmd'`: stdout, stderr and the exit code come back intact; stdin and its EOF reach
/// the command (also VS Code's `ssh -T host bash` pattern); LANG and LC_* pass, other variables
/// do not; a command killed by a signal is reported as such.
pub fn exec_round_trip(env: &Env) {
    let out = env.ssh_run("echo out; echo err >&2; exit 7", 60);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", out.stderr_text());
    assert_eq!(out.stdout_text(), "out\n");
    assert!(
        out.stderr_text().contains("err\n"),
        "stderr: {}",
        out.stderr_text()
    );

    // stdin reaches the command, and so does its EOF (wc -c ends only at EOF).
    let payload = data::bytes(3 << 20, 9);
    let mut input = b"hello\n".to_vec();
    input.extend_from_slice(&payload);
    let out = feed(
        env,
        &["hub", "read line; echo \"got $line\"; wc -c; exit 3"],
        input,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", out.stderr_text());
    assert_eq!(
        out.stdout_text().split_whitespace().collect::<Vec<_>>(),
        ["got", "hello", &(3 << 20).to_string()]
    );

    // The VS Code bootstrap pattern: `ssh -T host bash` with its script on stdin, no echo.
    let script = b"echo one two three | wc -w\necho done >&2\nexit 4\n".to_vec();
    let out = feed(env, &["-T", "hub", "bash"], script);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", out.stderr_text());
    assert_eq!(out.stdout_text().trim(), "3");
    assert!(out.stderr_text().contains("done"));

    // env requests: LANG and LC_* pass (OpenSSH's usual AcceptEnv), others do not.
    let out = procs::output(
        env.ssh()
            .env("LANG", "hubssh-test.UTF-8")
            .env("LC_HUBSSH_TEST", "lc-value")
            .env("HUBSSH_NOT_ACCEPTED", "nope")
            .args(["-o", "SendEnv=LANG LC_HUBSSH_TEST HUBSSH_NOT_ACCEPTED"])
            .args([
                "hub",
                "echo \"$LANG|$LC_HUBSSH_TEST|${HUBSSH_NOT_ACCEPTED:-unset}\"",
            ]),
        30,
    )
    .ok();
    assert_eq!(out.stdout_text(), "hubssh-test.UTF-8|lc-value|unset\n");

    // A command killed by a signal: reported as exit-signal, which OpenSSH's client turns into 255.
    let out = env.ssh_run("kill -TERM $$", 30);
    assert_eq!(
        out.status.code(),
        Some(255),
        "stderr: {}",
        out.stderr_text()
    );
}

/// Runs ssh with `args`, writing `input` to its stdin and closing it.
fn feed(env: &Env, args: &[&str], input: Vec<u8>) -> procs::Finished {
    let mut child = env.spawn_ssh(args, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = procs::wait(child, 60, &format!("ssh {args:?}"));
    writer.join().unwrap().unwrap();
    out
}

fn remote(path: &Path) -> String {
    format!("hub:{}", path.display())
}

/// scp in SFTP mode and with `-O` both ways, `sftp -b` put and get, `rsync -a` of a tree of many
/// small files and one of `big` bytes both ways: every copy compared byte for byte. `far` is a
/// directory the server's user can write, seen at the same path by the test.
pub fn transfers(env: &Env, far: &Path, big: usize) {
    let local = env.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
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

/// A tmux server on a private socket, killed on drop.
pub struct Tmux {
    pub socket: PathBuf,
}

impl Tmux {
    pub fn run(&self, args: &[&str]) -> procs::Finished {
        procs::output(
            Command::new("tmux").arg("-S").arg(&self.socket).args(args),
            20,
        )
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"]).stdout_text()
    }

    pub fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]).ok();
        self.run(&["send-keys", "-t", "t", "Enter"]).ok();
    }

    pub fn wait_for(&self, what: &str) {
        let mut screen = String::new();
        let seen = procs::wait_until(30, || {
            screen = self.screen();
            screen.contains(what)
        });
        assert!(seen, "{what:?} never appeared; the screen:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// An interactive `ssh -tt hub` in tmux: a typed command runs, the window size arrives and follows
/// a resize, there is a tty, Ctrl-C stops the foreground job only, `exit 3` is ssh's exit code.
pub fn interactive(env: &Env) {
    let status_file = env.path().join("status");
    let tmux = Tmux {
        socket: env.path().join("tmux.sock"),
    };
    // A terminal mode set locally must reach the remote pty (ssh sends it with pty-req).
    let inner = format!(
        "stty rprnt ^T; ssh -F {} -tt hub; echo \"ssh-exit=$?\" > {}",
        env.config.display(),
        status_file.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        &inner,
    ])
    .ok();
    tmux.run(&["set-option", "-t", "t", "remain-on-exit", "on"])
        .ok();

    tmux.type_line("echo \"marker-$((6 * 7))\"");
    tmux.wait_for("marker-42");
    tmux.type_line("stty size");
    tmux.wait_for("30 100");
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"])
        .ok();
    tmux.type_line("clear; stty size");
    tmux.wait_for("40 120");
    tmux.type_line("tty | grep -q /dev/ && echo has-a-tty");
    tmux.wait_for("has-a-tty");
    tmux.type_line("stty -a | grep -q 'rprnt = ^T' && echo \"modes-$((2 + 3))\"");
    tmux.wait_for("modes-5");

    tmux.type_line("sleep 100");
    std::thread::sleep(std::time::Duration::from_millis(300));
    tmux.run(&["send-keys", "-t", "t", "C-c"]).ok();
    tmux.type_line("echo \"after-$((1 + 1))\"");
    tmux.wait_for("after-2");

    tmux.type_line("exit 3");
    let done = procs::wait_until(30, || {
        std::fs::read_to_string(&status_file).is_ok_and(|s| s.contains("ssh-exit"))
    });
    assert!(done, "ssh did not end; the screen:\n{}", tmux.screen());
    assert_eq!(
        std::fs::read_to_string(&status_file).unwrap().trim(),
        "ssh-exit=3"
    );
}
