//! The listening socket: loopback/any TCP or a unix socket file (created 0600, a stale one
//! replaced, removed again when the listener is dropped, unless another server has put its own
//! in its place by then).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

/// One accepted connection, over TCP or a unix socket.
pub type Conn = Either<TcpStream, UnixStream>;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    Unix { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("another server is already listening on {}", .0.display())]
    InUse(PathBuf),
}

#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        socket: SocketFile,
    },
}

/// A socket file we created: removed when dropped, unless another file has taken its place by
/// then (a server started after ours may have found our socket gone quiet and put its own at
/// the path: that one stays).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    /// The file's device and inode as bound, to remove that file and no other.
    id: (u64, u64),
}

impl SocketFile {
    /// `path`, once the socket file is there, as the file whose identity `as_bound` has now
    /// (`path` itself, or where it was bound before being linked into place).
    pub fn new(path: PathBuf, as_bound: &Path) -> io::Result<Self> {
        Ok(SocketFile {
            path,
            id: file_id(as_bound)?,
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_id(&self.path).is_ok_and(|id| id == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file's device and inode, without following a symlink.
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

/// The directory that holds `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// An exclusive lock on the directory that holds `path`, for as long as a server there checks
/// whether the socket at `path` is stale, removes it and binds its own. Without it two servers
/// started at once could both find the same stale socket, and the second would remove the
/// first's fresh one and orphan it; with it the second finds the first's socket live. `None`
/// when the directory cannot be opened or locked (within 2 s): the replacement then goes
/// unguarded.
fn lock_parent(path: &Path) -> Option<Flock<File>> {
    let mut dir = File::open(parent_dir(path)).ok()?;
    // Held for a moment by another server binding there; never wait on a lock held for long.
    for _ in 0..100 {
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => dir = file,
            Err(_) => return None,
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

impl Listener {
    /// Binds a TCP listener; port 0 picks a free port (see [`Listener::describe`]).
    pub async fn bind_tcp(addr: SocketAddr) -> Result<Self, BindError> {
        TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|source| BindError::Tcp { addr, source })
    }

    /// Binds a unix socket at `path`, readable and writable by this user only. A stale socket
    /// left by a crashed server is replaced; a live one is an error.
    pub fn bind_unix(path: &Path) -> Result<Self, BindError> {
        let unix_err = |source| BindError::Unix {
            path: path.to_owned(),
            source,
        };
        let _replacing = lock_parent(path);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket(path.to_owned()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(unix_err)?;
        }
        // The umask makes the socket 0600 from its first instant, before any chmod could run.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        umask(old);
        let std_listener = bound.map_err(unix_err)?;
        std_listener.set_nonblocking(true).map_err(unix_err)?;
        let socket = SocketFile::new(path.to_owned(), path).map_err(unix_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(unix_err)?;
        Ok(Listener::Unix { listener, socket })
    }

    /// Where we listen, for the `listening on ...` line.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("tcp (unknown address: {e})")),
            Listener::Unix { socket, .. } => format!("unix:{}", socket.path.display()),
        }
    }

    /// True when only this machine's users can connect: a unix socket or a loopback address.
    pub fn is_local(&self) -> bool {
        match self {
            Listener::Tcp(l) => l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
            Listener::Unix { .. } => true,
        }
    }

    /// Whether only this user can connect without the hub's say-so: a unix socket (0600) whose
    /// directory nobody else can write to, so nobody can swap the socket. Never TCP: every local
    /// user (and any web page, through the browser) can reach loopback. `Err` says why not.
    pub fn private_to_owner(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        match self {
            Listener::Tcp(_) if self.is_local() => {
                Err("every local user can connect to loopback TCP".into())
            }
            Listener::Tcp(_) => Err("it is a network address".into()),
            Listener::Unix { socket, .. } => {
                let dir = parent_dir(&socket.path);
                let meta = std::fs::metadata(dir)
                    .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
                let me = nix::unistd::geteuid().as_raw();
                let sticky = meta.mode() & 0o1000 != 0;
                if meta.uid() != me && meta.uid() != 0 {
                    Err(format!("{} belongs to another user", dir.display()))
                } else if meta.mode() & 0o022 != 0 && !sticky {
                    Err(format!("others may write to {}", dir.display()))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Waits for the next connection; returns it with a printable peer name.
    pub async fn accept(&self) -> io::Result<(Conn, String)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                // SSH is interactive: keystrokes must not wait for Nagle. A peer already gone
                // can make this fail (EINVAL on macOS): that connection ends on its own, and the
                // accept loop must not pause for it.
                let _ = stream.set_nodelay(true);
                Ok((Either::Left(stream), peer.to_string()))
            }
            Listener::Unix { listener, socket } => {
                let (stream, _) = listener.accept().await?;
                Ok((
                    Either::Right(stream),
                    format!("unix:{}", socket.path.display()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn unix_socket_is_private_replaced_when_stale_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        {
            let _stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        }
        assert!(path.exists(), "a stale socket file stays behind");
        let listener = Listener::bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            Listener::bind_unix(&path),
            Err(BindError::InUse(_))
        ));
        drop(listener);
        assert!(!path.exists());

        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            Listener::bind_unix(&path),
            Err(BindError::NotASocket(_))
        ));
    }

    #[test]
    fn servers_started_at_once_on_a_stale_socket_leave_exactly_one_listening() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        for _ in 0..20 {
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            let start = std::sync::Barrier::new(4);
            let bound: Vec<_> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let _rt = runtime.enter();
                            start.wait();
                            Listener::bind_unix(&path)
                        })
                    })
                    .collect();
                starts.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let mut live = bound.into_iter().filter_map(|b| match b {
                Ok(l) => Some(l),
                Err(BindError::InUse(_)) => None,
                Err(e) => panic!("{e}"),
            });
            let winner = live.next().expect("no server listens");
            assert!(live.next().is_none(), "two servers think they listen");
            let Listener::Unix { socket, .. } = &winner else {
                unreachable!()
            };
            assert_eq!(
                file_id(&path).unwrap(),
                socket.id,
                "the one listening lost its socket"
            );
        }
    }

    #[tokio::test]
    async fn a_socket_another_server_put_in_place_stays_when_ours_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let ours = Listener::bind_unix(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = Listener::bind_unix(&path).unwrap();
        drop(ours);
        assert!(path.exists(), "the other server's socket was removed");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(theirs);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn loopback_is_local() {
        let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(l.is_local());
        assert!(l.describe().starts_with("127.0.0.1:"));
    }
}
