//! Where each open channel's incoming bytes go. The handler and the tasks that open channels
//! (forwarded connections, agent requests) share it; bytes that arrive before a channel's
//! consumer is registered are held and handed over on registration, never dropped.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use russh::server::Handle;
use russh::ChannelId;
use tokio_util::sync::CancellationToken;

use super::inbox::{inbox, Grant, Inbox, InboxTx};

#[derive(Default)]
enum Slot {
    /// Not registered yet: what arrived so far, whether EOF did, and whether the client has
    /// closed the channel already (its consumer still gets what came before).
    #[default]
    Early,
    Held {
        data: Vec<Bytes>,
        eof: bool,
        closed: bool,
        /// A consumer is on its way: the server opened this channel ([`Channels::opened`]).
        awaited: bool,
    },
    Live(InboxTx),
}

/// The connection's channel table.
#[derive(Default)]
pub struct Channels {
    slots: Mutex<HashMap<ChannelId, Slot>>,
    /// Fired when the connection has ended.
    gone: CancellationToken,
    /// The session, for granting window; set at login, before any channel opens.
    session: OnceLock<Handle>,
}

impl Channels {
    /// Keeps the session's handle: inboxes re-open their channel's window through it.
    pub fn set_session(&self, session: Handle) {
        let _ = self.session.set(session);
    }

    /// Creates the inbox for channel `id`, with anything that arrived before, in order. Once the
    /// connection has ended, the inbox is at its end at once.
    pub fn register(&self, id: ChannelId) -> Inbox {
        let grant = self.session.get().cloned().map(|session| {
            Box::new(move |n| {
                let _ = session.grant_window(id, n); // fails only once the session is over
            }) as Grant
        });
        let (tx, rx) = inbox(grant);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if self.gone.is_cancelled() {
            tx.close();
            return rx;
        }
        if let Some(Slot::Held {
            data, eof, closed, ..
        }) = slots.insert(id, Slot::Live(tx.clone()))
        {
            for d in data {
                tx.push_now(d);
            }
            if eof {
                tx.eof();
            }
            if closed {
                slots.remove(&id);
                tx.close();
            }
        }
        rx
    }

    /// The client confirmed a channel the server opened (a forwarded connection, an agent
    /// request). Its consumer registers from another task, so the client may close the channel
    /// first: from now on that close is kept for the consumer, which would otherwise wait on
    /// its local stream for good.
    pub fn opened(&self, id: ChannelId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !self.gone.is_cancelled() {
            slots.entry(id).or_insert_with(|| Slot::Held {
                data: Vec::new(),
                eof: false,
                closed: false,
                awaited: true,
            });
        }
    }

    /// Delivers bytes the client sent on channel `id`.
    pub async fn push(&self, id: ChannelId, data: &[u8]) {
        let tx = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.entry(id).or_default() {
                Slot::Live(tx) => tx.clone(),
                slot @ Slot::Early => {
                    *slot = Slot::Held {
                        data: vec![Bytes::copy_from_slice(data)],
                        eof: false,
                        closed: false,
                        awaited: false,
                    };
                    return;
                }
                Slot::Held { data: held, .. } => {
                    held.push(Bytes::copy_from_slice(data));
                    return;
                }
            }
        };
        tx.push(data).await
    }

    /// The client will send no more on channel `id`.
    pub fn eof(&self, id: ChannelId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.entry(id).or_default() {
            Slot::Live(tx) => tx.eof(),
            Slot::Held { eof, .. } => *eof = true,
            slot @ Slot::Early => {
                *slot = Slot::Held {
                    data: Vec::new(),
                    eof: true,
                    closed: false,
                    awaited: false,
                }
            }
        }
    }

    /// The client closed channel `id` (or its open was refused): forgets it. A consumer that is
    /// done with a channel leaves its entry to this: bytes that still come meanwhile are dropped
    /// (their window granted back), and no entry outlives the channel.
    pub fn remove(&self, id: ChannelId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Closed before its consumer came (a channel the server opened, fast client): the
        // consumer, when it registers, gets what came and the close.
        if let Some(Slot::Held {
            eof,
            closed,
            awaited: true,
            ..
        }) = slots.get_mut(&id)
        {
            (*eof, *closed) = (true, true);
            return;
        }
        // Otherwise nobody will come for it (a session channel closed before its command
        // started), or its consumer is told.
        if let Some(Slot::Live(tx)) = slots.remove(&id) {
            tx.close();
        }
    }

    /// How many channels have an entry (open, or with bytes held for them).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The connection has ended: every inbox reaches its end, and [`Channels::gone`] fires. Tasks
    /// that still hold the table (forwarded connections) must not keep the channels alive.
    pub fn close(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        self.gone.cancel();
        for (_, slot) in slots.drain() {
            if let Slot::Live(tx) = slot {
                tx.close();
            }
        }
    }

    /// Resolves once the connection has ended.
    pub async fn gone(&self) {
        self.gone.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn id(n: u32) -> ChannelId {
        use russh::keys::ssh_encoding::Decode;
        ChannelId::decode(&mut &n.to_be_bytes()[..]).unwrap()
    }

    async fn read_all(inbox: Inbox) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            inbox.into_reader().read_to_end(&mut got),
        )
        .await
        .expect("the inbox never ended")
        .expect("read");
        got
    }

    #[tokio::test]
    async fn a_channel_closed_before_its_consumer_registers_ends_its_inbox() {
        let channels = Channels::default();
        let (quiet, talking) = (id(1), id(2));
        for id in [quiet, talking] {
            channels.opened(id);
        }
        channels.push(talking, b"hello").await;
        for id in [quiet, talking] {
            channels.remove(id);
        }
        assert_eq!(read_all(channels.register(quiet)).await, b"");
        assert_eq!(read_all(channels.register(talking)).await, b"hello");
        assert_eq!(channels.len(), 0, "a closed channel's entry stays");
    }

    #[tokio::test]
    async fn no_entry_outlives_its_channel() {
        let channels = Channels::default();
        // A consumer done before the client's close, with bytes still coming meanwhile.
        channels.opened(id(1));
        drop(channels.register(id(1)));
        channels.push(id(1), b"late").await;
        channels.eof(id(1));
        channels.remove(id(1));
        // A session channel that got bytes, then closed before its command started.
        channels.push(id(2), b"early").await;
        channels.remove(id(2));
        assert_eq!(channels.len(), 0);
    }
}
