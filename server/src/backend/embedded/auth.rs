//! SSH authentication for the embedded server: `tunnel` (the tunnel was already authenticated for
//! this server's owner) or `keys` (the user's `authorized_keys`, re-read on every attempt).

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{AuthorizedKeys, PublicKey};
use tracing::{debug, warn};

/// How SSH clients are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshAuth {
    /// Anyone who got through the tunnel is the owner: no key needed.
    Tunnel,
    /// A key listed in this authorized_keys file.
    Keys(PathBuf),
}

impl SshAuth {
    pub fn name(&self) -> &'static str {
        match self {
            SshAuth::Tunnel => "tunnel",
            SshAuth::Keys(_) => "keys",
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

/// Whether `key` is listed in the authorized_keys file at `path`. A missing or unreadable file
/// lists nothing. Keys are compared by key data only; an entry with options the embedded server
/// does not enforce lets nobody in (with a warning saying why).
pub fn is_authorized(path: &Path, key: &PublicKey) -> bool {
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
        assert!(is_authorized(&path, listed.public_key()));
        // Meant to be limited: not let in rather than let in without the limits.
        for options in [
            "no-pty",
            "restrict",
            "command=\"rrsync ~/backup\"",
            "from=\"10.0.0.0/8\",no-user-rc",
        ] {
            std::fs::write(&path, format!("{options} {line}\n")).unwrap();
            assert!(!is_authorized(&path, listed.public_key()), "{options}");
        }
        assert!(!is_authorized(&path, other.public_key()));
        assert!(!is_authorized(
            &dir.path().join("missing"),
            listed.public_key()
        ));
    }
}
