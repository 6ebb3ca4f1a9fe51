//! ssh's side of the tunnel: stdin as an `AsyncRead`, stdout as an `AsyncWrite`.
//!
//! ssh hands a ProxyCommand two pipes. On unix those are read and written on the runtime's own
//! thread (non-blocking; the pipes are ours alone), straight from and into the pump's buffers.
//! Anything else (a terminal, a file, a socket, and everything on Windows) is served by plain
//! threads with blocking I/O, so a terminal is never switched to non-blocking mode (which would
//! break other programs sharing it); chunks cross to and from those threads over channels.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Bytes a stdin thread reads at once; one read becomes at most one WebSocket message.
/// jupyter-server-proxy reads at most 256 KiB per message.
pub const READ_CHUNK: usize = 256 * 1024;

/// Chunks queued between a stdio thread and the pump (backpressure beyond).
const QUEUE: usize = 16;

/// ssh's stdin.
pub enum Input {
    #[cfg(unix)]
    Pipe(tokio::net::unix::pipe::Receiver),
    Thread(ThreadReader),
}

/// ssh's stdout.
pub enum Output {
    #[cfg(unix)]
    Pipe(tokio::net::unix::pipe::Sender),
    Thread(ThreadWriter),
}

/// stdin, read on the runtime if it is a pipe, by a thread otherwise. Must be called within a
/// tokio runtime.
pub fn stdin() -> Input {
    #[cfg(unix)]
    if let Some(pipe) = unix_pipes::stdin() {
        return Input::Pipe(pipe);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    std::thread::spawn(move || {
        let stdin = io::stdin();
        #[cfg(unix)]
        hubssh_wire::pipes::grow(&stdin);
        let mut stdin = stdin.lock();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%e, "stdin read failed");
                    break;
                }
            }
        }
    });
    Input::Thread(ThreadReader {
        rx,
        current: Bytes::new(),
    })
}

/// stdout, written on the runtime if it is a pipe, by a thread otherwise. The thread's handle
/// tells when what was queued has been written. Must be called within a tokio runtime.
pub fn stdout() -> (Output, Option<std::thread::JoinHandle<()>>) {
    #[cfg(unix)]
    if let Some(pipe) = unix_pipes::stdout() {
        return (Output::Pipe(pipe), None);
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let handle = std::thread::spawn(move || {
        let mut stdout = io::stdout().lock();
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
    (
        Output::Thread(ThreadWriter {
            tx: PollSender::new(tx),
        }),
        Some(handle),
    )
}

/// Chunks from the stdin thread as a byte stream; EOF when the thread ends.
pub struct ThreadReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl AsyncRead for ThreadReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.current.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.current = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Bytes for the stdout thread; shutting down lets it finish and stop.
pub struct ThreadWriter {
    tx: PollSender<Bytes>,
}

fn output_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "stdout was closed")
}

impl AsyncWrite for ThreadWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.tx.poll_reserve(cx)).map_err(|_| output_gone())?;
        self.tx
            .send_item(Bytes::copy_from_slice(buf))
            .map_err(|_| output_gone())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Input {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Input::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            Input::Thread(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            #[cfg(unix)]
            Output::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            Output::Thread(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Output::Pipe(p) => Pin::new(p).poll_flush(cx),
            Output::Thread(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Output::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            Output::Thread(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}

/// stdin and stdout as non-blocking pipes on the runtime, when they are pipes.
#[cfg(unix)]
mod unix_pipes {
    use std::os::fd::AsFd;

    use tokio::net::unix::pipe;

    /// stdin, if it is a pipe. `from_owned_fd` refuses anything that is not a FIFO, so a
    /// terminal is never made non-blocking; a pipe's read end is ssh's gift to us alone.
    pub fn stdin() -> Option<pipe::Receiver> {
        let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
        hubssh_wire::pipes::grow(&fd);
        pipe::Receiver::from_owned_fd(fd).ok()
    }

    /// stdout, if it is a pipe.
    pub fn stdout() -> Option<pipe::Sender> {
        let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
        pipe::Sender::from_owned_fd(fd).ok()
    }
}
