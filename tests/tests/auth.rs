//! SSH authentication on the embedded backend: `keys` lets in listed keys only and re-reads the
//! file on every attempt; `tunnel` needs no key but only where nobody else can reach the
//! listener, and never silently for root.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::procs;
use hubssh_tests::server::refused;

fn is_root() -> bool {
    hubssh_tests::user_name() == "root"
}

#[test]
fn keys_policy_rejects_unknown_keys_and_rereads_the_file() {
    let env = Env::new();
    let _server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let other = env.path().join("other_key");
    procs::output(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
            .arg(&other),
        20,
    )
    .ok();
    let with_other = |cmd: &str| env.ssh_run(cmd, 30);

    // The config's IdentityFile now names the key that is not listed.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace(&env.key.display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let out = with_other("true");
    assert_eq!(
        out.status.code(),
        Some(255),
        "an unknown key must be refused"
    );
    assert!(
        out.stderr_text().contains("Permission denied"),
        "{}",
        out.stderr_text()
    );

    // Listing it takes effect at the next attempt, no restart.
    let mut keys = std::fs::read_to_string(&env.authorized_keys).unwrap();
    keys.push_str(&std::fs::read_to_string(other.with_extension("pub")).unwrap());
    std::fs::write(&env.authorized_keys, keys).unwrap();
    assert_eq!(with_other("echo in").ok().stdout_text(), "in\n");
}

/// As sshd's StrictModes: a listed key is refused while the authorized_keys file, or a
/// directory above it, is writable by others (who could have listed their own key), with the
/// reason in hubsshd's log; tightening the mode lets it in at the next attempt.
#[test]
fn keys_policy_refuses_a_file_others_could_have_written() {
    let env = Env::new();
    let server = env.start(Backend::Embedded, Route::Hubssh, &[]);
    let mode = |path: &std::path::Path, m: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let dir = env.authorized_keys.parent().unwrap().to_owned();
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    for (loose, m) in [(&env.authorized_keys, 0o666), (&dir, 0o777)] {
        let before = std::fs::metadata(loose).unwrap().permissions().mode();
        mode(loose, m);
        let out = env.ssh_run("true", 30);
        assert_eq!(
            out.status.code(),
            Some(255),
            "{} at {m:o} let a key in",
            loose.display()
        );
        assert!(
            out.stderr_text().contains("Permission denied"),
            "{}",
            out.stderr_text()
        );
        assert!(
            server.log().contains("writable by others"),
            "no reason in the log:\n{}",
            server.log()
        );
        mode(loose, before);
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode(),
        dir_mode
    );
    assert_eq!(env.ssh_run("echo in", 30).ok().stdout_text(), "in\n");
}

#[test]
fn tunnel_policy_on_a_private_unix_socket_needs_no_key() {
    let env = Env::new();
    std::fs::write(&env.authorized_keys, "").unwrap(); // no key is listed anywhere
    let extra: &[&str] = if is_root() {
        &["--ssh-auth", "tunnel", "--allow-root-tunnel"]
    } else {
        &["--ssh-auth", "tunnel"]
    };
    let _server = env.start(Backend::Embedded, Route::Raw, extra);
    let out = env.ssh_run("echo no-key-needed", 30).ok();
    assert_eq!(out.stdout_text(), "no-key-needed\n");
}

#[test]
fn tunnel_policy_is_refused_where_others_could_connect() {
    let scratch = hubssh_tests::scratch();
    let state = scratch.path().join("state");
    let refuse = |args: &[&str], want: &str| {
        let err = refused(&state, args);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refuse(
        &[
            "--listen",
            "0.0.0.0:0",
            "--ssh-auth",
            "tunnel",
            "--allow-root-tunnel",
        ],
        "lets anyone",
    );
    refuse(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "none",
            "--ssh-auth",
            "tunnel",
            "--allow-root-tunnel",
        ],
        "every local user can connect",
    );
    let open_dir = scratch.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = open_dir.join("s.sock");
    refuse(
        &[
            "--unix-socket",
            sock.to_str().unwrap(),
            "--ssh-auth",
            "tunnel",
            "--allow-root-tunnel",
        ],
        "others may write to",
    );
    if is_root() {
        let private = scratch.path().join("p.sock");
        refuse(
            &[
                "--unix-socket",
                private.to_str().unwrap(),
                "--ssh-auth",
                "tunnel",
            ],
            "refusing --ssh-auth tunnel as root",
        );
    }
}
