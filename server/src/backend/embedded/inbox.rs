//! Per-channel input queues. russh hands every channel's incoming data to the one connection
//! task; if that task waited on a slow consumer, every other channel would stall with it. So the
//! handler drops bytes into a channel's inbox at once and a task per channel drains it.
//!
//! The channel's window is what bounds an inbox, as in sshd: russh is told not to re-open it on
//! receipt, and the inbox grants the client more window only as its consumer takes bytes out.
//! A slow consumer so stops its own channel's sender and nothing else. Only a client that sends
//! past its window can get an inbox to [`INBOX_CAP`], and then the connection waits for it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Bytes a channel may have queued before the connection waits for its consumer: twice the
/// window, so only a client that ignores the window reaches it.
pub const INBOX_CAP: usize = 2 * super::WINDOW as usize;

/// Window is granted back in steps of this many consumed bytes (sshd grants at three packets or
/// half the window). Far below the window, so the sender never waits on a step.
const GRANT_STEP: usize = 256 * 1024;

/// Re-opens this many bytes of the channel's window for the client.
pub type Grant = Box<dyn Fn(u32) + Send + Sync>;

#[derive(Debug)]
enum Item {
    Data(Bytes),
    Eof,
}

#[derive(Default)]
struct Level {
    queued: AtomicUsize,
    consumer_gone: AtomicBool,
    drained: Notify,
    /// Fired when the channel is closed (by the client, or with its connection): unlike EOF,
    /// nothing more can go either way.
    closed: CancellationToken,
    /// None where no window is kept (unit tests).
    grant: Option<Grant>,
}

impl Level {
    fn grant(&self, n: usize) {
        if let Some(grant) = &self.grant {
            // Steps are far below u32::MAX; what was queued at a drop is at most the cap.
            grant(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
}

impl std::fmt::Debug for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Level")
            .field("queued", &self.queued)
            .field("consumer_gone", &self.consumer_gone)
            .finish_non_exhaustive()
    }
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
    /// Bytes taken out and not yet granted back.
    ungranted: usize,
}

/// A channel's inbox; `grant` re-opens the channel's window as its bytes are consumed.
pub fn inbox(grant: Option<Grant>) -> (InboxTx, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let level = Arc::new(Level {
        grant,
        ..Level::default()
    });
    (
        InboxTx {
            tx,
            level: level.clone(),
        },
        Inbox {
            rx,
            level,
            ungranted: 0,
        },
    )
}

impl InboxTx {
    /// Queues `data`; returns at once unless the consumer is [`INBOX_CAP`] behind. Once the
    /// consumer is gone, bytes are dropped and their window granted back at once (the client
    /// must not stall on a channel whose reader left).
    pub async fn push(&self, data: &[u8]) {
        if self.level.consumer_gone.load(Ordering::Acquire) {
            self.level.grant(data.len());
            return;
        }
        self.level.queued.fetch_add(data.len(), Ordering::AcqRel);
        let _ = self.tx.send(Item::Data(Bytes::copy_from_slice(data)));
        if self.level.consumer_gone.load(Ordering::Acquire) {
            // The consumer left while these bytes went in: its drop may not have counted them.
            self.level
                .grant(self.level.queued.swap(0, Ordering::AcqRel));
            return;
        }
        let mut warned = false;
        while self.level.queued.load(Ordering::Acquire) > INBOX_CAP
            && !self.level.consumer_gone.load(Ordering::Acquire)
        {
            if !warned {
                warn!(
                    "a client sent {} MiB past a channel's window: the connection waits for it",
                    (INBOX_CAP - super::WINDOW as usize) >> 20
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

    /// The channel is closed: see [`Inbox::closed`].
    pub fn close(&self) {
        self.level.closed.cancel();
    }
}

impl Inbox {
    /// Fires once the channel is closed. What was queued before can still be received.
    pub fn closed(&self) -> CancellationToken {
        self.level.closed.clone()
    }

    /// The next chunk, or `None` at EOF.
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match ready!(self.rx.poll_recv(cx)) {
            Some(Item::Data(data)) => {
                self.level.queued.fetch_sub(data.len(), Ordering::AcqRel);
                self.level.drained.notify_one();
                self.ungranted += data.len();
                if self.ungranted >= GRANT_STEP {
                    self.level.grant(std::mem::take(&mut self.ungranted));
                }
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
    /// The consumer is gone: what it took and what is still queued will never be granted by it,
    /// so grant it now; later bytes are granted as they arrive ([`InboxTx::push`]).
    fn drop(&mut self) {
        self.level.consumer_gone.store(true, Ordering::Release);
        let queued = self.level.queued.swap(0, Ordering::AcqRel);
        self.level.grant(self.ungranted + queued);
        self.level.drained.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_then_eof() {
        let (tx, mut rx) = inbox(None);
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
        let (tx, rx) = inbox(None);
        tx.push(b"hello ").await;
        tx.push(b"world").await;
        tx.eof();
        let mut out = String::new();
        rx.into_reader().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    /// An inbox whose grants add up in the returned counter.
    fn counted() -> (InboxTx, Inbox, Arc<AtomicUsize>) {
        let granted = Arc::new(AtomicUsize::new(0));
        let count = granted.clone();
        let (tx, rx) = inbox(Some(Box::new(move |n| {
            count.fetch_add(n as usize, Ordering::AcqRel);
        })));
        (tx, rx, granted)
    }

    #[tokio::test]
    async fn window_comes_back_as_the_consumer_takes_bytes_not_before() {
        let (tx, mut rx, granted) = counted();
        let chunk = vec![0u8; 32 * 1024];
        for _ in 0..64 {
            tx.push(&chunk).await; // 2 MiB queued
        }
        assert_eq!(
            granted.load(Ordering::Acquire),
            0,
            "granted before consumed"
        );
        for taken in 1..=64 {
            rx.recv().await.unwrap();
            let granted = granted.load(Ordering::Acquire);
            assert!(granted <= taken * chunk.len(), "granted more than taken");
            assert!(
                granted + GRANT_STEP > taken * chunk.len(),
                "a step not granted"
            );
        }
    }

    #[tokio::test]
    async fn a_consumer_that_leaves_gives_back_its_window() {
        let (tx, mut rx, granted) = counted();
        tx.push(&[0u8; 1000]).await;
        tx.push(&[0u8; 500]).await;
        rx.recv().await.unwrap(); // taken, below a step: not granted yet
        drop(rx);
        assert_eq!(granted.load(Ordering::Acquire), 1500, "taken and queued");
        tx.push(&[0u8; 700]).await; // dropped, and granted at once
        assert_eq!(granted.load(Ordering::Acquire), 2200);
    }

    #[tokio::test]
    async fn push_never_blocks_below_the_cap_nor_after_the_consumer_left() {
        let (tx, rx) = inbox(None);
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..INBOX_CAP >> 20 {
            tx.push(&chunk).await; // nobody reads, yet no wait
        }
        drop(rx);
        tx.push(&chunk).await; // over the cap, but the consumer is gone
    }

    #[tokio::test]
    async fn over_the_cap_waits_for_the_consumer() {
        let (tx, mut rx) = inbox(None);
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
