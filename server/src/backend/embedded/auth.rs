//! SSH authentication for the embedded server: `tunnel` (the tunnel was already authenticated for
//! this server's owner) or `keys` (the user's `authorized_keys`, re-read on every attempt).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{AuthorizedKeys, PublicKey};
use tracing::{debug, warn};

/// How SSH clients are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshAuth {
    /// Anyone who got through the tunnel is the owner: no key needed.
    Tunnel,
    /// A key listed in this authorized_keys file, trusted only while nobody but the user (or
    /// root) can change it: see [`untrusted`].
    Keys { file: PathBuf, home: PathBuf },
}

impl SshAuth {
    pub fn name(&self) -> &'static str {
        match self {
            SshAuth::Tunnel => "tunnel",
            SshAuth::Keys { .. } => "keys",
        }
    }
}

/// authorized_keys options that change nothing here: no X11 forwarding and no `~/.ssh/rc` is
/// all the embedded server does anyway.
const OPTIONS_WE_MEET: [&str; 2] = ["no-x11-forwarding", "no-user-rc"];

/// The options of an entry the embedded server would not enforce (`command=`, `restrict`,
/// `from=`, `no-pty`...): such a key was meant to be limited, so it is not let in at all.
fn unenforced_options(entry: &russh::keys::ssh_key::authorized_keys::Entry) -> Vec<&str> {
    entry
        .config_opts()
        .iter()
        .filter(|o| {
            let name = o.split('=').next().unwrap_or_default();
            !OPTIONS_WE_MEET.iter().any(|m| m.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// Why the authorized_keys file at `path` cannot be trusted to say who logs in as the user
/// `uid`, or `None` when it can: as sshd's `StrictModes`, the file (a regular file) and every
/// directory above it, up to the home directory `home` where the file lies within it and up to
/// `/` otherwise, must be owned by the user or root and writable by nobody else (writable by its
/// group only where the owner is that group's one member), or another user could add a key.
/// A missing file is left to the read (it lists nothing).
fn untrusted(path: &Path, home: &Path, uid: u32) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    for (i, p) in real.ancestors().enumerate() {
        let meta = match std::fs::metadata(p) {
            Ok(meta) => meta,
            Err(e) => return Some(format!("cannot check {}: {e}", p.display())),
        };
        if i == 0 && !meta.is_file() {
            return Some(format!("{} is not a regular file", p.display()));
        }
        if meta.uid() != uid && meta.uid() != 0 {
            return Some(format!(
                "{} is owned by another user (uid {})",
                p.display(),
                meta.uid()
            ));
        }
        let group_writable = meta.mode() & 0o020 != 0 && !group_is_only(meta.gid(), meta.uid());
        if meta.mode() & 0o002 != 0 || group_writable {
            return Some(format!(
                "{} is writable by others than its owner (mode {:o}; chmod go-w)",
                p.display(),
                meta.mode() & 0o7777
            ));
        }
        if p == home {
            break;
        }
    }
    None
}

/// Whether the group `gid` has one member, the user `owner`: as a primary group (in /etc/passwd)
/// or a supplementary one. Then a path writable by that group is writable by its owner alone, as
/// Debian's and Ubuntu's sshd allow: user-private groups, and images whose home directory is
/// group-writable for a group only the user is in.
fn group_is_only(gid: u32, owner: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    let (Ok(Some(group)), Ok(Some(user))) = (
        Group::from_gid(Gid::from_raw(gid)),
        User::from_uid(Uid::from_raw(owner)),
    ) else {
        return false;
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut members = 0;
    for entry in passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if entry.len() >= 4 && entry[3].parse() == Ok(gid) {
            if entry[2].parse() != Ok(owner) {
                return false;
            }
            members += 1;
        }
    }
    match group.mem.as_slice() {
        [] => {}
        [only] if *only == user.name => members += 1,
        _ => return false,
    }
    members > 0
}

/// Whether `key` is listed in the authorized_keys file at `path` (of the user whose home is
/// `home`). A missing or unreadable file lists nothing, nor does one others could have written
/// (with a warning saying why). Keys are compared by key data only; an entry with options the
/// embedded server does not enforce lets nobody in (with a warning saying why).
pub fn is_authorized(path: &Path, home: &Path, key: &PublicKey) -> bool {
    if let Some(reason) = untrusted(path, home, nix::unistd::geteuid().as_raw()) {
        warn!(
            path = %path.display(),
            %reason,
            "refusing every key: authorized_keys could have been written by another user"
        );
        return false;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            debug!(%e, path = %path.display(), "no authorized_keys");
            return false;
        }
    };
    AuthorizedKeys::new(&text).any(|entry| match entry {
        Ok(entry) if entry.public_key().key_data() == key.key_data() => {
            let unenforced = unenforced_options(&entry);
            if !unenforced.is_empty() {
                warn!(
                    path = %path.display(),
                    options = unenforced.join(","),
                    "refusing a key whose authorized_keys options the embedded server does not enforce; remove them, or use --backend openssh"
                );
            }
            unenforced.is_empty()
        }
        Ok(_) => false,
        Err(e) => {
            warn!(%e, path = %path.display(), "skipping an unreadable authorized_keys line");
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};

    #[test]
    fn listed_keys_only() {
        let mut rng = russh::keys::key::safe_rng();
        let listed = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let line = listed.public_key().to_openssh().unwrap();
        std::fs::write(
            &path,
            format!(
                "# comment\n\nnot a key line\nno-X11-forwarding,no-user-rc {line} other-comment\n"
            ),
        )
        .unwrap();
        assert!(is_authorized(&path, dir.path(), listed.public_key()));
        // Meant to be limited: not let in rather than let in without the limits.
        for options in [
            "no-pty",
            "restrict",
            "command=\"rrsync ~/backup\"",
            "from=\"10.0.0.0/8\",no-user-rc",
        ] {
            std::fs::write(&path, format!("{options} {line}\n")).unwrap();
            assert!(
                !is_authorized(&path, dir.path(), listed.public_key()),
                "{options}"
            );
        }
        assert!(!is_authorized(&path, dir.path(), other.public_key()));
        assert!(!is_authorized(
            &dir.path().join("missing"),
            dir.path(),
            listed.public_key()
        ));
    }

    #[test]
    fn a_file_others_could_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        let uid = nix::unistd::geteuid().as_raw();
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        mode(&ssh, 0o700);
        let file = ssh.join("authorized_keys");
        std::fs::write(&file, "").unwrap();
        mode(&file, 0o644);
        assert_eq!(untrusted(&file, home.path(), uid), None);
        // Only the home directory and below count when the file is inside it.
        mode(home.path(), 0o755);
        assert_eq!(untrusted(&file, home.path(), uid), None);
        for (what, path, loose) in [
            ("file", &file, 0o666),
            ("file", &file, 0o602),
            (".ssh", &ssh, 0o777),
            ("home", &home.path().to_owned(), 0o757),
        ] {
            let before = std::fs::metadata(path).unwrap().permissions().mode();
            mode(path, loose);
            let reason = untrusted(&file, home.path(), uid);
            assert!(
                reason
                    .as_deref()
                    .is_some_and(|r| r.contains("writable by others")),
                "{what} {loose:o}: {reason:?}"
            );
            mode(path, before);
        }
        // Writable by its group: trusted only where the owner is the group's one member.
        mode(&file, 0o664);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(
            untrusted(&file, home.path(), uid).is_none(),
            group_is_only(meta.gid(), meta.uid())
        );
        mode(&file, 0o644);
        // Outside the home directory every directory up to / counts: /tmp is everyone's.
        assert!(untrusted(&file, &home.path().join("elsewhere"), uid).is_some());
        assert!(untrusted(&ssh, home.path(), uid).is_some_and(|r| r.contains("not a regular file")));
        if uid == 0 {
            // nogroup is nobody's primary group, so it has a member who is not root.
            assert!(!group_is_only(65534, 0));
            // Owned by someone else (checkable as root only).
            nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(untrusted(&file, home.path(), uid).is_some_and(|r| r.contains("another user")));
        }
    }
}
