//! Byte-stream view of a server-side WebSocket: binary (and text) messages in, binary messages out,
//! so the SSH backends see one `AsyncRead + AsyncWrite` whatever the transport.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest message we send. jupyter-server-proxy reads at most 256 KiB per message and tornado
/// rejects messages over 10 MiB; staying at 256 KiB keeps every hop happy.
pub const MAX_SEND: usize = 256 * 1024;

/// Largest message we accept. hubssh sends at most 256 KiB and websocat 64 KiB; larger is a
/// misbehaving peer, refused with close code 1009.
pub const MAX_RECEIVE: usize = 4 * 1024 * 1024;

/// WebSocket settings for the tunnel.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_RECEIVE))
        .max_frame_size(Some(MAX_RECEIVE))
}

/// A WebSocket seen as a byte stream. Reading ends at the peer's Close; shutting down sends ours.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    read_closed: bool,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            pending: Bytes::new(),
            read_closed: false,
        }
    }
}

fn to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        WsError::Capacity(e) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "closing a client that sent an oversized message ({e}; the limit is {} MiB)",
                MAX_RECEIVE >> 20
            ),
        ),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(text))) => self.pending = Bytes::from(text),
                Some(Ok(Message::Close(_))) | None => self.read_closed = true,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A peer that vanishes without a Close frame has still ended its side.
                Some(Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                )) => self.read_closed = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_SEND);
        let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        Pin::new(&mut self.ws).start_send(msg).map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn carries_bytes_both_ways_and_closes() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(config())).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let mut io = WsIo::new(server);

        client
            .send(Message::Binary(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        client.send(Message::text("def")).await.unwrap();
        client.send(Message::Ping(Bytes::new())).await.unwrap();
        let mut got = [0u8; 6];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");

        let big = vec![7u8; MAX_SEND + 10];
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut lens = Vec::new();
        while let Some(Ok(msg)) = client.next().await {
            match msg {
                Message::Binary(d) => lens.push(d.len()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        client.flush().await.unwrap(); // sends the Close reply
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(lens, vec![MAX_SEND, 10]);
    }
}
