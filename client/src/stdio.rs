//! ssh's side of the pipe: stdin and stdout served by plain threads with blocking I/O, so the
//! terminal or pipe is never switched to non-blocking mode (which would break other programs
//! sharing it) and the same code runs on Linux, macOS and Windows.

use std::io::{Read, Write};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Bytes read from stdin at once; one read becomes at most one WebSocket message.
/// jupyter-server-proxy reads at most 256 KiB per message.
pub const READ_CHUNK: usize = 256 * 1024;

/// Chunks queued between the threads and the pump in each direction (backpressure beyond).
const QUEUE: usize = 16;

/// Starts the stdin reader. The channel closes at EOF or on a read error.
pub fn stdin_reader() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut stdin = stdin.lock();
        let mut buf = BytesMut::new();
        loop {
            buf.resize(READ_CHUNK, 0);
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = buf.split_to(n).freeze();
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

/// Starts the stdout writer. It ends when the sender is dropped (after writing what was queued)
/// or when stdout is closed by its reader.
pub fn stdout_writer() -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let handle = std::thread::spawn(move || {
        let stdout = std::io::stdout();
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
    (tx, handle)
}
