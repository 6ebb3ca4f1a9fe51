//! An interactive session on a real pty, driven by tmux: the prompt appears, typed commands run,
//! the window size arrives and follows a resize, Ctrl-C stops the foreground job only, and
//! `exit 3` becomes ssh's exit code.

use std::path::PathBuf;
use std::process::Command;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs;

struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> procs::Finished {
        procs::output(
            Command::new("tmux").arg("-S").arg(&self.socket).args(args),
            20,
        )
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"]).stdout_text()
    }

    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]).ok();
        self.run(&["send-keys", "-t", "t", "Enter"]).ok();
    }

    fn wait_for(&self, what: &str) {
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

fn interactive(backend: Backend, route: Route) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    let status_file = env.path().join("status");
    let tmux = Tmux {
        socket: env.path().join("tmux.sock"),
    };
    let inner = format!(
        "ssh -F {} -tt hub; echo \"ssh-exit=$?\" > {}",
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

#[test]
fn embedded_interactive_pty() {
    interactive(Backend::Embedded, Route::Hubssh);
}

#[test]
fn openssh_interactive_pty() {
    interactive(Backend::OpenSsh, Route::Hubssh);
}
