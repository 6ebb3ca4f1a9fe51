//! hubsshd's per-user state directory and the host key kept in it, so that ssh sees the same
//! host key across restarts wherever the home directory persists.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Returns the path of the host key in `dir`, generating it with `ssh-keygen` on first use.
pub fn ensure_host_key(dir: &Path, ssh_keygen: &Path) -> Result<PathBuf, StateError> {
    ensure_dir(dir)?;
    let path = dir.join(HOST_KEY_FILE);
    let fail = |reason: String| StateError::HostKey {
        path: path.clone(),
        reason,
    };
    if !path.exists() {
        let out = Command::new(ssh_keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "hubsshd", "-f"])
            .arg(&path)
            .output()
            .map_err(|e| fail(format!("cannot run {}: {e}", ssh_keygen.display())))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(e.to_string()))?;
    Ok(path)
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
}
