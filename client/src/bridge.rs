//! The tunnel's life once open: ssh's bytes pumped both ways, pings while the server is quiet,
//! and how it ended, in words a person understands.

use std::io;
use std::time::Duration;

use hubssh_wire::{Keepalive, PumpError, PumpOptions, ReadEnd, WsStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Pings without any frame from the server before the connection is given up.
pub const MISSED_PINGS: u32 = 3;

#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// Ping period; `None` sends no pings and never declares the connection dead.
    pub ping_interval: Option<Duration>,
    /// After input EOF, how long to wait for the server's Close (and the last output).
    pub close_wait: Duration,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        BridgeOptions {
            ping_interval: Some(Duration::from_secs(30)),
            close_wait: Duration::from_secs(2),
        }
    }
}

/// How a bridge ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum BridgeEnd {
    /// Input reached EOF; our Close was sent.
    InputClosed,
    /// The server closed the WebSocket normally (the SSH session is over).
    ServerClosed,
    /// Whoever reads our output went away.
    OutputClosed,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the tunnel was closed by the server (code {code}{})", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    ClosedAbnormally { code: u16, reason: String },
    #[error("the tunnel to the server was lost: {0}")]
    Lost(String),
    #[error("no answer from the server for {0} s: the connection is dead")]
    Dead(u64),
}

/// Close codes that mean the session ended as it should: 1000, or a Close without a code.
fn normal(code: u16) -> bool {
    matches!(code, 1000 | 1005)
}

/// Moves bytes until one side ends: `input` carries what ssh writes, `output` takes what ssh
/// should read. At input EOF our Close goes out and the server's last output gets
/// `close_wait`; when the server closes, output is closed at once (ssh must not hang).
pub async fn bridge<S, R, W>(
    mut ws: WsStream<S>,
    input: &mut R,
    output: &mut W,
    opts: BridgeOptions,
) -> Result<BridgeEnd, BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(interval) = opts.ping_interval {
        ws.set_keepalive(Keepalive {
            interval,
            missed: MISSED_PINGS,
        });
    }
    let pump_opts = PumpOptions {
        linger: Some(opts.close_wait),
        end_with_tunnel: true,
    };
    let pumped = hubssh_wire::pump(&mut ws, input, output, pump_opts).await;
    if matches!(ws.read_end(), Some(ReadEnd::Closed { .. })) {
        // Our answer to the server's Close may still be queued.
        let _ = tokio::time::timeout(opts.close_wait, ws.flush()).await;
    }
    // An abnormal Close is the answer, however the pump ended.
    let closed_normally = match ws.read_end() {
        Some(ReadEnd::Closed { code, reason }) if !normal(*code) => {
            return Err(BridgeError::ClosedAbnormally {
                code: *code,
                reason: reason.clone(),
            })
        }
        Some(ReadEnd::Closed { .. }) => true,
        _ => false,
    };
    match pumped {
        Ok(p) if p.input_ended_first => Ok(BridgeEnd::InputClosed),
        Ok(_) if closed_normally => Ok(BridgeEnd::ServerClosed),
        Ok(_) => Err(BridgeError::Lost(
            "the connection closed without a WebSocket close".into(),
        )),
        Err(PumpError::Output(e)) => {
            tracing::debug!(%e, "stdout closed");
            Ok(BridgeEnd::OutputClosed)
        }
        Err(PumpError::Input(e)) => {
            // As good as EOF: ssh is going away.
            tracing::debug!(%e, "stdin read failed");
            Ok(BridgeEnd::InputClosed)
        }
        // Our write raced the server's normal close.
        Err(PumpError::Tunnel(_)) if closed_normally => Ok(BridgeEnd::ServerClosed),
        Err(PumpError::Tunnel(e)) if e.kind() == io::ErrorKind::TimedOut => Err(BridgeError::Dead(
            opts.ping_interval
                .map_or(0, |p| (p * MISSED_PINGS).as_secs()),
        )),
        Err(PumpError::Tunnel(e)) => Err(BridgeError::Lost(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use hubssh_wire::Role;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{self, frame::CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// Our client end, a real (tungstenite) server end, and ssh's two pipes.
    struct Rig {
        server: WebSocketStream<DuplexStream>,
        ssh_in: DuplexStream,
        ssh_out: DuplexStream,
        run: tokio::task::JoinHandle<Result<BridgeEnd, BridgeError>>,
    }

    async fn rig(opts: BridgeOptions) -> Rig {
        let (a, b) = tokio::io::duplex(1 << 20);
        let ws = WsStream::new(a, Role::Client, b"", 1 << 24);
        let server = WebSocketStream::from_raw_socket(b, protocol::Role::Server, None).await;
        let (ssh_in, mut input) = tokio::io::duplex(1 << 16);
        let (mut output, ssh_out) = tokio::io::duplex(1 << 16);
        let run = tokio::spawn(async move { bridge(ws, &mut input, &mut output, opts).await });
        Rig {
            server,
            ssh_in,
            ssh_out,
            run,
        }
    }

    #[tokio::test]
    async fn moves_bytes_and_ends_on_input_eof() {
        let mut r = rig(BridgeOptions::default()).await;
        r.ssh_in.write_all(b"up").await.unwrap();
        assert_eq!(
            r.server.next().await.unwrap().unwrap(),
            Message::binary(&b"up"[..])
        );
        r.server.send(Message::binary(&b"down"[..])).await.unwrap();
        let mut got = [0u8; 4];
        r.ssh_out.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"down");
        drop(r.ssh_in);
        assert!(matches!(
            r.server.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
        r.server.flush().await.unwrap();
        assert_eq!(r.run.await.unwrap().unwrap(), BridgeEnd::InputClosed);
    }

    #[tokio::test]
    async fn server_close_ends_output_at_once() {
        let mut r = rig(BridgeOptions::default()).await;
        r.server.send(Message::binary(&b"bye"[..])).await.unwrap();
        r.server.close(None).await.unwrap();
        let mut got = Vec::new();
        r.ssh_out.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(r.run.await.unwrap().unwrap(), BridgeEnd::ServerClosed);
    }

    #[tokio::test]
    async fn abnormal_close_and_lost_connection_are_errors() {
        let mut r = rig(BridgeOptions::default()).await;
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "shutting down".into(),
        };
        r.server.send(Message::Close(Some(frame))).await.unwrap();
        let err = r.run.await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("code 1001: shutting down"),
            "{err}"
        );

        let r = rig(BridgeOptions::default()).await;
        drop(r.server);
        assert!(matches!(r.run.await.unwrap(), Err(BridgeError::Lost(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_is_declared_dead() {
        let r = rig(BridgeOptions::default()).await;
        // The server end is never polled: pings go unanswered.
        let err = r.run.await.unwrap().unwrap_err();
        assert!(matches!(err, BridgeError::Dead(90)), "{err}");
        drop(r.server);
    }
}
