//! ssh's side of the tunnel: stdin and stdout as queues of chunks.
//!
//! ssh hands a ProxyCommand two pipes. On unix those are read and written on the runtime's own
//! thread (non-blocking; the pipes are ours alone), with no thread hand-off per chunk. Anything
//! else (a terminal, a file, a socket, and everything on Windows) is served by plain threads with
//! blocking I/O, so a terminal is never switched to non-blocking mode (which would break other
//! programs sharing it).

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Bytes read from stdin at once; one read becomes at most one WebSocket message.
/// jupyter-server-proxy reads at most 256 KiB per message.
pub const READ_CHUNK: usize = 256 * 1024;

/// Size of the arena input chunks are cut from: more than the queue holds in flight at once.
/// Once every chunk cut from it has been sent and dropped, the next `reserve` reuses it. A fresh
/// zeroed buffer per read, which malloc handed back to the kernel each time, cost 400 000 page
/// faults and 2.9 s of CPU per uploaded GiB.
const ARENA: usize = 4 << 20;

/// Chunks queued between stdio and the pump in each direction (backpressure beyond).
const QUEUE: usize = 16;

/// Capacity asked for the pipes ssh gives us (Linux; the default is 64 KiB, the most an
/// unprivileged process may ask is `/proc/sys/fs/pipe-max-size`, 1 MiB by default). With 64 KiB
/// every 64 KiB of a transfer costs a wake-up of each side; bigger pipes let one read take a
/// whole burst.
#[cfg(target_os = "linux")]
const PIPE_SIZE: i32 = 1 << 20;

/// Makes the pipe behind `fd` bigger, if it is a pipe: a terminal, a socket or a file is left
/// as it is, and so is a pipe whose size cannot be raised.
#[cfg(target_os = "linux")]
fn grow_pipe(fd: impl std::os::fd::AsFd) {
    use nix::fcntl::{fcntl, FcntlArg};
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// Starts the stdin reader. The channel closes at EOF or on a read error.
/// Must be called within a tokio runtime.
pub fn stdin_reader() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(QUEUE);
    #[cfg(unix)]
    if let Some(pipe) = unix_pipes::stdin() {
        tokio::spawn(unix_pipes::read(pipe, tx));
        return rx;
    }
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        #[cfg(target_os = "linux")]
        grow_pipe(&stdin);
        let mut stdin = stdin.lock();
        // Each read lands in one reused buffer and is copied into the arena chunks are cut from.
        let mut buf = vec![0u8; READ_CHUNK];
        let mut arena = BytesMut::with_capacity(ARENA);
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    arena.reserve(n);
                    arena.put_slice(&buf[..n]);
                    let chunk = arena.split().freeze();
                    if tx.blocking_send(chunk).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%e, "stdin read failed");
                    break;
                }
            }
        }
    });
    rx
}

/// What writes stdout: a thread or a task.
pub enum Writer {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Writer {
    /// Whether everything queued has been written (or stdout was closed by its reader).
    pub fn is_finished(&self) -> bool {
        match self {
            Writer::Thread(t) => t.is_finished(),
            Writer::Task(t) => t.is_finished(),
        }
    }
}

/// Starts the stdout writer. It ends when the sender is dropped (after writing what was queued)
/// or when stdout is closed by its reader. Must be called within a tokio runtime.
pub fn stdout_writer() -> (mpsc::Sender<Bytes>, Writer) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    #[cfg(unix)]
    if let Some(pipe) = unix_pipes::stdout() {
        return (tx, Writer::Task(tokio::spawn(unix_pipes::write(pipe, rx))));
    }
    let handle = std::thread::spawn(move || {
        let stdout = std::io::stdout();
        #[cfg(target_os = "linux")]
        grow_pipe(&stdout);
        let mut stdout = stdout.lock();
        while let Some(chunk) = rx.blocking_recv() {
            if stdout
                .write_all(&chunk)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
        }
    });
    (tx, Writer::Thread(handle))
}

/// stdin and stdout as non-blocking pipes on the runtime, when they are pipes.
#[cfg(unix)]
mod unix_pipes {
    use std::os::fd::AsFd;

    use bytes::{BufMut, Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::pipe;
    use tokio::sync::mpsc;

    use super::{ARENA, READ_CHUNK};

    /// stdin, if it is a pipe. `from_owned_fd` refuses anything that is not a FIFO, so a
    /// terminal is never made non-blocking; a pipe's read end is ssh's gift to us alone.
    pub fn stdin() -> Option<pipe::Receiver> {
        let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
        #[cfg(target_os = "linux")]
        super::grow_pipe(&fd);
        pipe::Receiver::from_owned_fd(fd).ok()
    }

    /// stdout, if it is a pipe.
    pub fn stdout() -> Option<pipe::Sender> {
        let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
        #[cfg(target_os = "linux")]
        super::grow_pipe(&fd);
        pipe::Sender::from_owned_fd(fd).ok()
    }

    /// Reads straight into the arena's spare room (no copy, no zeroing) and queues each read.
    pub async fn read(mut pipe: pipe::Receiver, tx: mpsc::Sender<Bytes>) {
        let mut arena = BytesMut::with_capacity(ARENA);
        loop {
            arena.reserve(READ_CHUNK);
            match pipe.read_buf(&mut (&mut arena).limit(READ_CHUNK)).await {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(arena.split().freeze()).await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%e, "stdin read failed");
                    break;
                }
            }
        }
    }

    /// Writes each queued chunk; stops when the queue closes or stdout's reader is gone.
    pub async fn write(mut pipe: pipe::Sender, mut rx: mpsc::Receiver<Bytes>) {
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = pipe.write_all(&chunk).await {
                tracing::debug!(%e, "stdout write failed");
                break;
            }
        }
    }
}
