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

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{cipher, Preferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use auth::SshAuth;
pub use user::UserInfo;

/// Keepalive probes while a connection is idle; three unanswered end it.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Per-channel window. Large enough for full speed over a WAN with ~50 ms round trips.
const WINDOW: u32 = 8 * 1024 * 1024;

/// Largest packet we accept. OpenSSH clients send 32 KiB; more lets other clients batch.
const MAX_PACKET: u32 = 65535;

/// Delay after a rejected authentication attempt (each wrong key in an agent costs one).
const AUTH_REJECTION: Duration = Duration::from_millis(100);

/// The embedded SSH server, configured.
pub struct Embedded {
    config: Arc<Config>,
    shared: Arc<handler::Shared>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("auth", &self.shared.auth)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    pub fn new(host_key: PrivateKey, auth: SshAuth, user: UserInfo) -> Self {
        let mut preferred = Preferred::default();
        // OpenSSH offers aes128-gcm; russh does not by default.
        let mut ciphers = preferred.cipher.to_vec();
        ciphers.push(cipher::AES_128_GCM);
        preferred.cipher = ciphers.into();
        let config = Config {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-hubsshd_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            keys: vec![host_key],
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 3,
            auth_rejection_time: AUTH_REJECTION,
            auth_rejection_time_initial: Some(Duration::ZERO),
            window_size: WINDOW,
            maximum_packet_size: MAX_PACKET,
            nodelay: true,
            preferred,
            ..Default::default()
        };
        Embedded {
            config: Arc::new(config),
            shared: Arc::new(handler::Shared { user, auth }),
        }
    }

    pub fn auth(&self) -> &SshAuth {
        &self.shared.auth
    }

    /// Serves one SSH connection until the client leaves or `cancel` fires.
    pub async fn serve<S>(&self, stream: S, cancel: CancellationToken) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = handler::Handler::new(self.shared.clone());
        let running = russh::server::run_stream(self.config.clone(), stream, handler)
            .await
            .map_err(std::io::Error::other)?;
        let handle = running.handle();
        tokio::select! {
            ended = running => match ended {
                Ok(()) => debug!("ssh connection closed"),
                Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    warn!(%e, "ssh connection ended")
                }
                Err(e) => debug!(%e, "ssh connection ended"),
            },
            _ = cancel.cancelled() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "hubsshd is shutting down".into(), "en".into())
                    .await;
            }
        }
        Ok(())
    }
}
