//! SSH backends: what serves the SSH protocol once a connection's bytes are known to be SSH.

pub mod embedded;
pub mod openssh;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use embedded::Embedded;
pub use openssh::OpenSsh;

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
    pub async fn serve<S>(&self, stream: S, cancel: CancellationToken) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Backend::Embedded(b) => b.serve(stream, cancel).await,
            Backend::OpenSsh(b) => b.serve(stream, cancel).await,
        }
    }
}
