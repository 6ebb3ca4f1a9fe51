//! The byte pump between ssh and the WebSocket: input chunks out as binary messages (flushed after
//! every burst, so nothing waits in a TLS buffer), messages in as output chunks, pings while idle,
//! and a watchdog that ends a connection the server stopped answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Most input bytes sent in one burst before a flush, so a fast writer cannot starve pings.
const MAX_BURST: usize = 1024 * 1024;

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

/// Moves bytes until one side ends. `input` carries what ssh writes (closed at its EOF);
/// `output` takes what ssh should read.
pub async fn bridge<S>(
    ws: WebSocketStream<S>,
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    opts: BridgeOptions,
) -> Result<BridgeEnd, BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let start = Instant::now();
    let last_seen = AtomicU64::new(0);
    let touch = || last_seen.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);

    let reader = async {
        while let Some(msg) = stream.next().await {
            touch();
            let data = match msg {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Text(text)) => Bytes::from(text),
                Ok(Message::Close(frame)) => {
                    return match frame {
                        None => Ok(BridgeEnd::ServerClosed),
                        Some(f) if f.code == CloseCode::Normal => Ok(BridgeEnd::ServerClosed),
                        Some(f) => Err(BridgeError::ClosedAbnormally {
                            code: f.code.into(),
                            reason: f.reason.to_string(),
                        }),
                    }
                }
                Ok(_) => continue,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Ok(BridgeEnd::ServerClosed)
                }
                Err(e) => return Err(BridgeError::Lost(e.to_string())),
            };
            if output.send(data).await.is_err() {
                return Ok(BridgeEnd::OutputClosed);
            }
        }
        Err(BridgeError::Lost(
            "the connection closed without a WebSocket close".into(),
        ))
    };

    let writer = async {
        let mut ticker = opts.ping_interval.map(|p| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                chunk = input.recv() => match chunk {
                    Some(chunk) => {
                        let mut burst = chunk.len();
                        sink.feed(Message::Binary(chunk)).await?;
                        while burst < MAX_BURST {
                            let Ok(more) = input.try_recv() else { break };
                            burst += more.len();
                            sink.feed(Message::Binary(more)).await?;
                        }
                        sink.flush().await?;
                    }
                    None => {
                        sink.send(Message::Close(None)).await?;
                        return Ok::<(), WsError>(());
                    }
                },
                _ = tick => sink.send(Message::Ping(Bytes::new())).await?,
            }
        }
    };

    let watchdog = async {
        let Some(period) = opts.ping_interval else {
            return std::future::pending().await;
        };
        let limit = period * MISSED_PINGS;
        loop {
            tokio::time::sleep(period).await;
            let seen = Duration::from_millis(last_seen.load(Ordering::Relaxed));
            if start.elapsed().saturating_sub(seen) > limit {
                return limit.as_secs();
            }
        }
    };

    tokio::pin!(reader, writer, watchdog);
    tokio::select! {
        end = &mut reader => end,
        wrote = &mut writer => match wrote {
            Ok(()) => {
                // Our Close is out: keep delivering output until the server answers, briefly.
                match tokio::time::timeout(opts.close_wait, &mut reader).await {
                    Ok(Err(BridgeError::Lost(_))) | Err(_) => Ok(BridgeEnd::InputClosed),
                    Ok(end) => end.map(|_| BridgeEnd::InputClosed),
                }
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => reader.await,
            Err(e) => Err(BridgeError::Lost(e.to_string())),
        },
        secs = &mut watchdog => Err(BridgeError::Dead(secs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::{frame::CloseFrame, Role};

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (client, server)
    }

    #[tokio::test]
    async fn moves_bytes_and_ends_on_input_eof() {
        let (client, mut server) = pair().await;
        let (in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let run = tokio::spawn(bridge(client, in_rx, out_tx, BridgeOptions::default()));
        in_tx.send(Bytes::from_static(b"up")).await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::binary(&b"up"[..])
        );
        server.send(Message::binary(&b"down"[..])).await.unwrap();
        assert_eq!(out_rx.recv().await.unwrap(), Bytes::from_static(b"down"));
        drop(in_tx);
        assert!(matches!(
            server.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
        server.flush().await.unwrap();
        assert_eq!(run.await.unwrap().unwrap(), BridgeEnd::InputClosed);
    }

    #[tokio::test]
    async fn abnormal_close_and_lost_connection_are_errors() {
        let (client, mut server) = pair().await;
        let (_in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, _out_rx) = mpsc::channel(8);
        let run = tokio::spawn(bridge(client, in_rx, out_tx, BridgeOptions::default()));
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "shutting down".into(),
        };
        server.send(Message::Close(Some(frame))).await.unwrap();
        let err = run.await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("code 1001: shutting down"),
            "{err}"
        );

        let (client, server) = pair().await;
        let (_in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, _out_rx) = mpsc::channel(8);
        let run = tokio::spawn(bridge(client, in_rx, out_tx, BridgeOptions::default()));
        drop(server);
        assert!(matches!(run.await.unwrap(), Err(BridgeError::Lost(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_is_declared_dead() {
        let (client, _server) = pair().await;
        let (_in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, _out_rx) = mpsc::channel(8);
        let opts = BridgeOptions {
            ping_interval: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        // The server half is never polled: pings go unanswered.
        let err = bridge(client, in_rx, out_tx, opts).await.unwrap_err();
        assert!(matches!(err, BridgeError::Dead(90)), "{err}");
    }
}
