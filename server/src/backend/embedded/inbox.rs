//! Per-channel input queues. russh hands every channel's incoming data to the one connection
//! task; if that task waited on a slow consumer, every other channel would stall with it. So the
//! handler drops bytes into a channel's inbox at once and a task per channel drains it.
//! Only when a consumer is [`INBOX_CAP`] behind does the connection wait for it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tracing::warn;

/// Bytes a channel may have queued before the connection waits for its consumer. Large enough
/// that a stuck `-L` target (which OpenSSH would stop with the channel window) never reaches it
/// in practice; small enough to bound memory per channel.
pub const INBOX_CAP: usize = 16 * 1024 * 1024;

#[derive(Debug)]
enum Item {
    Data(Bytes),
    Eof,
}

#[derive(Debug, Default)]
struct Level {
    queued: AtomicUsize,
    consumer_gone: AtomicBool,
    drained: Notify,
}

/// The sending side, kept by the connection handler.
#[derive(Debug, Clone)]
pub struct InboxTx {
    tx: mpsc::UnboundedSender<Item>,
    level: Arc<Level>,
}

/// The receiving side, owned by the task that feeds the consumer.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Item>,
    level: Arc<Level>,
}

pub fn inbox() -> (InboxTx, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let level = Arc::new(Level::default());
    (
        InboxTx {
            tx,
            level: level.clone(),
        },
        Inbox { rx, level },
    )
}

impl InboxTx {
    /// Queues `data`; returns at once unless the consumer is [`INBOX_CAP`] behind.
    pub async fn push(&self, data: &[u8]) {
        self.level.queued.fetch_add(data.len(), Ordering::AcqRel);
        if self
            .tx
            .send(Item::Data(Bytes::copy_from_slice(data)))
            .is_err()
        {
            return;
        }
        let mut warned = false;
        while self.level.queued.load(Ordering::Acquire) > INBOX_CAP
            && !self.level.consumer_gone.load(Ordering::Acquire)
        {
            if !warned {
                warn!(
                    "a channel's consumer is {} MiB behind: the connection waits for it",
                    INBOX_CAP >> 20
                );
                warned = true;
            }
            self.level.drained.notified().await;
        }
    }

    /// Queues `data` without waiting, whatever the level (for bytes already accepted).
    pub fn push_now(&self, data: Bytes) {
        self.level.queued.fetch_add(data.len(), Ordering::AcqRel);
        let _ = self.tx.send(Item::Data(data));
    }

    /// Marks the end of input.
    pub fn eof(&self) {
        let _ = self.tx.send(Item::Eof);
    }
}

impl Inbox {
    /// The next chunk, or `None` at EOF.
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match ready!(self.rx.poll_recv(cx)) {
            Some(Item::Data(data)) => {
                self.level.queued.fetch_sub(data.len(), Ordering::AcqRel);
                self.level.drained.notify_one();
                Poll::Ready(Some(data))
            }
            Some(Item::Eof) | None => Poll::Ready(None),
        }
    }

    /// The inbox as a byte stream that ends at the client's EOF: for in-process consumers (the
    /// SFTP server) that read directly, without a pipe and its copy in between.
    pub fn into_reader(self) -> InboxReader {
        InboxReader {
            inbox: self,
            current: Bytes::new(),
        }
    }

    /// Copies everything into `out`, then shuts it down (EOF for the consumer).
    pub async fn pump<W: AsyncWrite + Unpin>(mut self, mut out: W) -> std::io::Result<()> {
        while let Some(data) = self.recv().await {
            out.write_all(&data).await?;
            out.flush().await?;
        }
        out.shutdown().await
    }
}

/// See [`Inbox::into_reader`].
#[derive(Debug)]
pub struct InboxReader {
    inbox: Inbox,
    current: Bytes,
}

impl AsyncRead for InboxReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.current.is_empty() {
            match ready!(self.inbox.poll_recv(cx)) {
                Some(data) => self.current = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.level.consumer_gone.store(true, Ordering::Release);
        self.level.drained.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_then_eof() {
        let (tx, mut rx) = inbox();
        tx.push(b"ab").await;
        tx.push(b"c").await;
        tx.eof();
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"ab"));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"c"));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn reader_yields_bytes_then_eof() {
        use tokio::io::AsyncReadExt;
        let (tx, rx) = inbox();
        tx.push(b"hello ").await;
        tx.push(b"world").await;
        tx.eof();
        let mut out = String::new();
        rx.into_reader().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn push_never_blocks_below_the_cap_nor_after_the_consumer_left() {
        let (tx, rx) = inbox();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..INBOX_CAP >> 20 {
            tx.push(&chunk).await; // nobody reads, yet no wait
        }
        drop(rx);
        tx.push(&chunk).await; // over the cap, but the consumer is gone
    }

    #[tokio::test]
    async fn over_the_cap_waits_for_the_consumer() {
        let (tx, mut rx) = inbox();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..INBOX_CAP >> 20 {
            tx.push(&chunk).await;
        }
        let push = tokio::spawn(async move { tx.push(&chunk).await });
        tokio::task::yield_now().await;
        assert!(!push.is_finished());
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        push.await.unwrap();
    }
}
