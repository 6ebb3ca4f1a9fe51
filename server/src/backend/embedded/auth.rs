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

/// Whether `key` is listed in the authorized_keys file at `path`. A missing or unreadable file
/// lists nothing. Keys are compared by key data only (comments and options aside).
pub fn is_authorized(path: &Path, key: &PublicKey) -> bool {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            debug!(%e, path = %path.display(), "no authorized_keys");
            return false;
        }
    };
    AuthorizedKeys::new(&text).any(|entry| match entry {
        Ok(entry) => entry.public_key().key_data() == key.key_data(),
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
            format!("# comment\n\nnot a key line\nno-pty {line} other-comment\n"),
        )
        .unwrap();
        assert!(is_authorized(&path, listed.public_key()));
        assert!(!is_authorized(&path, other.public_key()));
        assert!(!is_authorized(
            &dir.path().join("missing"),
            listed.public_key()
        ));
    }
}
