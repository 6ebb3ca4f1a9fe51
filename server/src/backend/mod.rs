//! SSH backends: what serves the SSH protocol once a connection's bytes are known to be SSH.

pub mod embedded;
pub mod openssh;

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use embedded::Embedded;
pub use openssh::OpenSsh;

/// How often an SSH connection is probed while its client is silent. Either way a client gets
/// about 90 s of silence before it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// The client is hubssh, which writes out every frame it takes: probe rarely.
    Relaxed,
    /// Any other client, or one we cannot see (raw SSH from jupyter-server-proxy). websocat holds
    /// the last frame it read from ssh until ssh writes again (its issues #250 and #129); when
    /// that frame is the window adjust the server waits for, the session stalls for good. A
    /// probe makes ssh answer, which pushes the held frame out: the stall lasts seconds.
    Eager,
}

impl Keepalive {
    /// Seconds between probes and how many may go unanswered.
    pub fn interval_and_max(self) -> (Duration, u32) {
        match self {
            Keepalive::Relaxed => (Duration::from_secs(30), 3),
            Keepalive::Eager => (Duration::from_secs(2), 45),
        }
    }

    /// What a WebSocket client's `User-Agent` says about it.
    pub fn for_user_agent(user_agent: Option<&str>) -> Keepalive {
        match user_agent {
            Some(ua) if ua.starts_with("hubssh/") => Keepalive::Relaxed,
            _ => Keepalive::Eager,
        }
    }
}

/// The SSH server behind the tunnel.
#[derive(Debug)]
pub enum Backend {
    /// The SSH server inside hubsshd.
    Embedded(Embedded),
    /// OpenSSH `sshd -i`, one process per connection.
    OpenSsh(OpenSsh),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::OpenSsh(_) => "openssh",
        }
    }

    /// Serves one SSH connection over `stream` until either side ends it or `cancel` fires.
    pub async fn serve<S>(
        &self,
        stream: S,
        keepalive: Keepalive,
        cancel: CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncBufRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Backend::Embedded(b) => b.serve(stream, keepalive, cancel).await,
            Backend::OpenSsh(b) => b.serve(stream, keepalive, cancel).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Keepalive;

    #[test]
    fn only_hubssh_gets_relaxed_keepalives() {
        for (ua, want) in [
            (Some("hubssh/0.1.0"), Keepalive::Relaxed),
            (Some("websocat/1.13"), Keepalive::Eager),
            (Some("Mozilla/5.0"), Keepalive::Eager),
            (None, Keepalive::Eager),
        ] {
            assert_eq!(Keepalive::for_user_agent(ua), want, "{ua:?}");
        }
    }
}
