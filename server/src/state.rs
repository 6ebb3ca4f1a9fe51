//! hubsshd's per-user state directory and the host key kept in it, so that ssh sees the same
//! host key across restarts wherever the home directory persists.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;

/// File name of the ed25519 host key inside the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no state directory: this user has no data directory; pass --state-dir")]
    NoDataDir,
    #[error("cannot prepare state directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot create host key {}: {reason}", path.display())]
    HostKey { path: PathBuf, reason: String },
}

/// The default state directory: `$XDG_DATA_HOME/hubssh` (usually `~/.local/share/hubssh`).
pub fn default_dir() -> Result<PathBuf, StateError> {
    dirs::data_dir()
        .map(|d| d.join("hubssh"))
        .ok_or(StateError::NoDataDir)
}

/// Creates `dir` (0700) if needed and tightens it to 0700 if it is looser.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    let err = |source| StateError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// The host key in `dir`: loaded, or generated (ed25519, 0600) on first use. Both backends use
/// this file, so switching backends does not change the host key clients know.
pub fn ensure_host_key(dir: &Path) -> Result<(PathBuf, PrivateKey), StateError> {
    ensure_dir(dir)?;
    let path = dir.join(HOST_KEY_FILE);
    let fail = |reason: String| StateError::HostKey {
        path: path.clone(),
        reason,
    };
    let load = |path: &Path| russh::keys::load_secret_key(path, None).map_err(|e| e.to_string());
    let key = if path.exists() {
        load(&path)
    } else {
        create_host_key(dir, &path, load)
    }
    .map_err(fail)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(e.to_string()))?;
    Ok((path, key))
}

/// Generates a host key and puts it at `path` whole (written 0600 beside it, then linked into
/// place), unless another hubsshd on the same directory got there first: then that key (`load`),
/// so both serve one key. A crash leaves no half-written key behind.
fn create_host_key(
    dir: &Path,
    path: &Path,
    load: impl Fn(&Path) -> Result<PrivateKey, String>,
) -> Result<PrivateKey, String> {
    let key = PrivateKey::random(
        &mut russh::keys::key::safe_rng(),
        russh::keys::Algorithm::Ed25519,
    )
    .map_err(|e| e.to_string())?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let mut staged = tempfile::Builder::new()
        .prefix(".host-key-")
        .tempfile_in(dir)
        .map_err(|e| e.to_string())?;
    staged
        .write_all(text.as_bytes())
        .and_then(|()| staged.as_file().sync_all())
        .map_err(|e| e.to_string())?;
    match staged.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(e.error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_created_private_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn host_key_is_private_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, first) = ensure_host_key(tmp.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_, again) = ensure_host_key(tmp.path()).unwrap();
        assert_eq!(first.public_key().key_data(), again.public_key().key_data());
    }

    #[test]
    fn hubsshds_starting_together_agree_on_one_host_key() {
        for _ in 0..10 {
            let tmp = tempfile::tempdir().unwrap();
            let keys: Vec<_> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| ensure_host_key(tmp.path()).unwrap().1))
                    .collect();
                starts.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for key in &keys[1..] {
                assert_eq!(key.public_key().key_data(), keys[0].public_key().key_data());
            }
            let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
            assert_eq!(names.len(), 1, "only the host key is left: {names:?}");
        }
    }
}
