//! The embedded backend: an SSH server inside hubsshd (russh), so no OpenSSH server is needed.
//! Sessions run as the user hubsshd runs as.

mod auth;
mod channels;
mod forward;
mod handler;
mod inbox;
mod process;
mod sftp;
mod tty_modes;
mod user;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{cipher, Preferred};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use auth::SshAuth;
pub use user::UserInfo;

/// Per-channel window. Large enough for full speed over a WAN with ~50 ms round trips.
const WINDOW: u32 = 8 * 1024 * 1024;

/// Largest packet we accept. OpenSSH clients send 32 KiB; more lets other clients batch.
const MAX_PACKET: u32 = 65535;

/// How long a disconnect may take to be queued (the session's queue can be full of output
/// for a client that stopped reading).
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Delay after a rejected authentication attempt (each wrong key in an agent costs one).
const AUTH_REJECTION: Duration = Duration::from_millis(100);

/// The embedded SSH server, configured.
pub struct Embedded {
    /// The server's configuration with relaxed keepalives (for hubssh), and with eager ones.
    relaxed: Arc<Config>,
    eager: Arc<Config>,
    shared: Arc<handler::Shared>,
    /// How long a client has from connecting to logging in (OpenSSH's LoginGraceTime): a peer
    /// that says nothing, or stalls before its login, is disconnected then, freeing its slot.
    login_grace: Duration,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("auth", &self.shared.auth)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    pub fn new(host_key: PrivateKey, auth: SshAuth, user: UserInfo, login_grace: Duration) -> Self {
        let mut preferred = Preferred::default();
        // OpenSSH offers aes128-gcm; russh does not by default.
        let mut ciphers = preferred.cipher.to_vec();
        ciphers.push(cipher::AES_128_GCM);
        preferred.cipher = ciphers.into();
        let config = |keepalive: super::Keepalive| {
            let (interval, max) = keepalive.interval_and_max();
            Config {
                server_id: russh::SshId::Standard(
                    format!("SSH-2.0-hubsshd_{}", env!("CARGO_PKG_VERSION")).into(),
                ),
                keys: vec![host_key.clone()],
                inactivity_timeout: None,
                keepalive_interval: Some(interval),
                keepalive_max: max as usize,
                auth_rejection_time: AUTH_REJECTION,
                auth_rejection_time_initial: Some(Duration::ZERO),
                window_size: WINDOW,
                // Inboxes re-open a channel's window as its consumer takes the bytes (inbox.rs).
                auto_window_adjust: false,
                maximum_packet_size: MAX_PACKET,
                nodelay: true,
                preferred: preferred.clone(),
                ..Default::default()
            }
        };
        Embedded {
            relaxed: Arc::new(config(super::Keepalive::Relaxed)),
            eager: Arc::new(config(super::Keepalive::Eager)),
            shared: Arc::new(handler::Shared { user, auth }),
            login_grace,
        }
    }

    pub fn auth(&self) -> &SshAuth {
        &self.shared.auth
    }

    /// Serves one SSH connection until the client leaves or `cancel` fires.
    pub async fn serve<S>(
        &self,
        stream: S,
        keepalive: super::Keepalive,
        cancel: CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // russh's session task owns the stream; cutting it is how a session that will not end
        // after its disconnect (a peer mid key exchange, or one that stopped reading) is ended.
        let cut = CancellationToken::new();
        let stream = Cuttable::new(stream, cut.clone());
        let logged_in = Arc::new(tokio::sync::Notify::new());
        let handler = handler::Handler::new(self.shared.clone(), logged_in.clone());
        let config = match keepalive {
            super::Keepalive::Relaxed => self.relaxed.clone(),
            super::Keepalive::Eager => self.eager.clone(),
        };
        let grace_over = tokio::time::sleep(self.login_grace);
        tokio::pin!(grace_over);
        // The version exchange: a peer that never sends its version line must not hold us.
        let running = tokio::select! {
            running = russh::server::run_stream(config, stream, handler) => {
                running.map_err(std::io::Error::other)?
            }
            _ = cancel.cancelled() => return Ok(()),
            _ = &mut grace_over => {
                info!(grace = ?self.login_grace, "closing connection: no SSH version line within the login grace period");
                return Ok(());
            }
        };
        let mut running = running;
        let handle = running.handle();
        let not_logged_in = async {
            tokio::select! {
                _ = logged_in.notified() => std::future::pending().await,
                _ = &mut grace_over => (),
            }
        };
        let goodbye = tokio::select! {
            ended = &mut running => {
                match ended {
                    Ok(()) => debug!("ssh connection closed"),
                    Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        warn!(%e, "ssh connection ended")
                    }
                    Err(e) => debug!(%e, "ssh connection ended"),
                }
                return Ok(());
            }
            _ = cancel.cancelled() => "hubsshd is shutting down",
            _ = not_logged_in => {
                info!(grace = ?self.login_grace, "disconnecting: no login within the login grace period");
                "no login within the login grace period"
            }
        };
        let disconnect = handle.disconnect(
            russh::Disconnect::ByApplication,
            goodbye.into(),
            "en".into(),
        );
        let _ = tokio::time::timeout(DISCONNECT_WAIT, disconnect).await;
        // russh sends the disconnect only outside a key exchange, and then waits for the client
        // to close: give it a moment, then cut the connection.
        if tokio::time::timeout(DISCONNECT_WAIT, &mut running)
            .await
            .is_err()
        {
            debug!("the session did not end after its disconnect: cutting the connection");
            cut.cancel();
            let _ = tokio::time::timeout(DISCONNECT_WAIT, &mut running).await;
        }
        Ok(())
    }
}

/// A stream that can be cut from outside: once its token fires, reads see EOF and writes fail,
/// and a read or write waiting on the stream wakes. The token is polled only when the stream
/// itself has nothing ready, so the data path pays nothing while bytes flow.
struct Cuttable<S> {
    inner: S,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    is_cut: bool,
}

impl<S> Cuttable<S> {
    fn new(inner: S, token: CancellationToken) -> Self {
        Cuttable {
            inner,
            cut: Box::pin(token.cancelled_owned()),
            is_cut: false,
        }
    }

    /// Whether the stream is cut; if not, `cx` is woken when it is.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        self.is_cut
    }

    /// One poll of the inner stream, unless the stream is cut (then `when_cut`); one that would
    /// wait ends as cut if the token has fired, and otherwise waits for it too.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        when_cut: fn() -> std::io::Result<T>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>>
    where
        S: Unpin,
    {
        if self.is_cut {
            return Poll::Ready(when_cut());
        }
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Pending if self.poll_cut(cx) => Poll::Ready(when_cut()),
            other => other,
        }
    }
}

fn cut_error<T>() -> std::io::Result<T> {
    Err(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "connection cut",
    ))
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .guard(cx, || Ok(()), |inner, cx| inner.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .guard(cx, cut_error, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().guard(cx, cut_error, |inner, cx| {
            inner.poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .guard(cx, cut_error, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .guard(cx, || Ok(()), |inner, cx| inner.poll_shutdown(cx))
    }
}
