//! Who gets served. A new connection first *arrives*: it has not yet said what it is (its first
//! bytes, its HTTP request head). Arrivals cost a peer nothing to make, so they have a bound of
//! their own, and a full set makes room by closing the one that has waited longest: a client that
//! means it sends its request at once, so silent peers, however many, cannot keep a session out
//! (the way sshd's `MaxStartups` guards its unauthenticated connections). A connection that has
//! said what it is then takes one of the session slots, or is refused when none is free.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most connections waiting to say what they are.
pub const MAX_ARRIVALS: usize = 128;

/// Most connections served at once, past their arrival.
pub const MAX_SESSIONS: usize = 512;

#[derive(Debug)]
pub struct Admission {
    /// Arrivals by connection number: the first is the one waiting longest.
    arrivals: Mutex<BTreeMap<u64, CancellationToken>>,
    max_arrivals: usize,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

impl Admission {
    pub fn new(max_arrivals: usize, max_sessions: usize) -> Arc<Self> {
        Arc::new(Admission {
            arrivals: Mutex::new(BTreeMap::new()),
            max_arrivals,
            sessions: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
        })
    }

    /// Registers connection `id` (numbers rise with each accept), closing the longest-waiting
    /// arrival when there are too many. `cancel` is the connection's own token.
    pub fn arrive(self: &Arc<Self>, id: u64, cancel: &CancellationToken) -> Arrival {
        let token = cancel.child_token();
        let crowded_out = {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
            let oldest = (arrivals.len() >= self.max_arrivals)
                .then(|| arrivals.pop_first())
                .flatten();
            arrivals.insert(id, token.clone());
            oldest
        };
        if let Some((_, oldest)) = crowded_out {
            oldest.cancel();
        }
        Arrival {
            id,
            token,
            connection: cancel.clone(),
            admission: self.clone(),
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

/// A connection that has not said what it is yet; dropping it ends its arrival.
#[derive(Debug)]
pub struct Arrival {
    id: u64,
    /// Cancelled by crowding out or by `connection`, whose child it is.
    token: CancellationToken,
    connection: CancellationToken,
    admission: Arc<Admission>,
}

/// Every session slot is taken.
#[derive(Debug, thiserror::Error)]
#[error("hubsshd is serving as many connections as it takes ({0})")]
pub struct Full(pub usize);

impl Arrival {
    /// `work` (reading what the peer says), unless newer arrivals crowd this one out or shutdown
    /// ends it first. What the peer has already sent is read before either counts.
    pub async fn wait<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            done = work => Some(done),
            _ = self.token.cancelled() => {
                if self.connection.is_cancelled() {
                    debug!("shutting down: closing a connection that had not reached SSH");
                } else {
                    warn!(
                        waiting = self.admission.max_arrivals,
                        "closing connection: it sent no request while newer connections kept arriving"
                    );
                }
                None
            }
        }
    }

    /// The connection has said what it is: its arrival ends, and it takes a session slot if
    /// one is free.
    pub fn admit(self) -> Result<OwnedSemaphorePermit, Full> {
        let admission = self.admission.clone();
        drop(self);
        admission
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full(admission.max_sessions))
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.admission
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_set_of_arrivals_closes_the_one_waiting_longest() {
        let admission = Admission::new(2, 1);
        let conn = CancellationToken::new();
        let first = admission.arrive(1, &conn);
        let second = admission.arrive(2, &conn);
        let third = admission.arrive(3, &conn);
        assert!(first.token.is_cancelled());
        assert!(!second.token.is_cancelled() && !third.token.is_cancelled());
        assert!(
            !conn.is_cancelled(),
            "only the arrival ends, not its connection's token"
        );
        assert_eq!(first.wait(std::future::pending::<()>()).await, None);
        // What a crowded-out peer had already sent still counts.
        assert_eq!(first.wait(async { 7 }).await, Some(7));
        drop(first);
        assert_eq!(admission.waiting(), 2);
    }

    #[tokio::test]
    async fn admitted_connections_take_session_slots_until_none_is_left() {
        let admission = Admission::new(4, 1);
        let conn = CancellationToken::new();
        let slot = admission.arrive(1, &conn).admit().unwrap();
        assert_eq!(
            admission.waiting(),
            0,
            "an admitted connection is no longer arriving"
        );
        let refused = admission.arrive(2, &conn).admit().unwrap_err();
        assert!(refused.to_string().contains("as it takes (1)"), "{refused}");
        drop(slot);
        assert!(admission.arrive(3, &conn).admit().is_ok());
    }

    #[tokio::test]
    async fn shutdown_ends_arrivals() {
        let admission = Admission::new(4, 4);
        let conn = CancellationToken::new();
        let arrival = admission.arrive(1, &conn);
        conn.cancel();
        assert_eq!(arrival.wait(std::future::pending::<()>()).await, None);
    }
}
