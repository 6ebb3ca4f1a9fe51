//! hubsshd: the server side of hubssh. It accepts connections on one listener (TCP or a unix
//! socket), tells WebSocket upgrades from raw SSH, and serves SSH over them with a backend.
//!
//! Map: [`listener`] binds and accepts; [`connection`] handles one connection; [`dialect`] sniffs
//! its first bytes; [`admission`] bounds connections that have not said what they are and
//! those served; [`http`] reads request heads; [`upgrade`] completes WebSocket handshakes;
//! [`prefixed`] replays sniffed bytes; [`read_ahead`] drains raw sockets; [`hub_auth`] checks hub
//! tokens; [`backend`] runs the SSH server; [`state`] keeps the host key; [`allocator`] holds the
//! memory allocator's setting.
#![forbid(unsafe_code)]

pub mod admission;
pub mod allocator;
pub mod backend;
pub mod connection;
pub mod dialect;
pub mod http;
pub mod hub_auth;
pub mod listener;
pub mod prefixed;
pub mod read_ahead;
pub mod state;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use admission::Admission;
pub use backend::Backend;
pub use listener::Listener;

/// Pause after a failed accept (for example out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How hubsshd authenticates WebSocket clients.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Nobody is checked: only for loopback and unix-socket listeners.
    None,
    /// A hub API token with access to this server (`--auth hub`). Raw SSH, which carries no
    /// token, is then accepted on a unix socket only.
    Hub(Arc<hub_auth::HubAuth>),
}

/// Everything a connection needs.
#[derive(Debug)]
pub struct Server {
    pub backend: Backend,
    pub auth: Auth,
    /// How long live sessions may go on after shutdown is asked for.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--auth none lets anyone who can reach {0} in; use it on a loopback address or a unix socket only")]
    UnauthenticatedExposed(String),
    #[error("--ssh-auth tunnel on {0} would let others in without a key: {1}. Use --ssh-auth keys, or a unix socket in a private directory")]
    TunnelExposed(String, String),
}

/// Checks that the listener and the auth settings together keep strangers out.
///
/// # Errors
/// `--auth none` anywhere but loopback or a unix socket; the `tunnel` SSH policy on a listener
/// that other users could reach.
pub fn check_exposure(listener: &Listener, server: &Server) -> Result<(), ServeError> {
    if matches!(server.auth, Auth::None) && !listener.is_local() {
        return Err(ServeError::UnauthenticatedExposed(listener.describe()));
    }
    if let Backend::Embedded(e) = &server.backend {
        // Behind hub auth on TCP, only the server's hub users get through (raw SSH is refused there).
        let hub_guarded =
            matches!(server.auth, Auth::Hub(_)) && matches!(listener, Listener::Tcp(_));
        if *e.auth() == backend::embedded::SshAuth::Tunnel && !hub_guarded {
            if let Err(why) = listener.private_to_owner() {
                return Err(ServeError::TunnelExposed(listener.describe(), why));
            }
        }
    }
    Ok(())
}

/// Raw SSH carries no token: with hub auth it is accepted only where nobody but this user can
/// connect (a unix socket; jupyter-server-proxy checked the token before passing the bytes on).
fn raw_ssh_allowed(listener: &Listener, server: &Server) -> bool {
    !(matches!(server.auth, Auth::Hub(_)) && matches!(listener, Listener::Tcp(_)))
}

/// Accepts connections on `listener` until `shutdown` fires, then gives live sessions
/// `shutdown_grace` to finish and ends the rest.
///
/// # Errors
/// Refuses to start when the listener and the auth mode together would expose SSH to others.
pub async fn serve(
    listener: Listener,
    server: Server,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    check_exposure(&listener, &server)?;
    let raw_ssh = raw_ssh_allowed(&listener, &server);
    let server = Arc::new(server);
    let tracker = TaskTracker::new();
    let sessions = CancellationToken::new();
    let admission = Admission::new(admission::MAX_ARRIVALS, admission::MAX_SESSIONS);
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (conn, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(%e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        next_id += 1;
        let span = info_span!("conn", id = next_id, %peer);
        let (server, cancel) = (server.clone(), sessions.child_token());
        let arrival = admission.arrive(next_id, &cancel);
        tracker.spawn(connection::handle(conn, server, raw_ssh, arrival, cancel).instrument(span));
    }
    drop(listener);
    tracker.close();
    if !tracker.is_empty() {
        info!(live = tracker.len(), grace = ?server.shutdown_grace, "shutting down: waiting for live sessions");
        if tokio::time::timeout(server.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            info!(live = tracker.len(), "grace period over: ending sessions");
            sessions.cancel();
            tracker.wait().await;
        }
    }
    info!("stopped");
    Ok(())
}
