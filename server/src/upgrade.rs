//! The server half of the WebSocket handshake (RFC 6455 4.2), then the connection as a byte
//! stream ([`WsStream`]).

use hubssh_wire::{Role, WsStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::{self, Head};

/// Largest message we accept. hubssh sends at most 256 KiB and websocat 64 KiB; larger is a
/// misbehaving peer, refused with close code 1009.
pub const MAX_RECEIVE: usize = 4 * 1024 * 1024;

/// The only WebSocket version there is.
const VERSION: &str = "13";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("not a valid WebSocket upgrade: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What is wrong with an upgrade request, if anything; the status to answer with and why.
fn check(head: &Head) -> Result<&str, (u16, &'static str, &'static str)> {
    if head.method != "GET" {
        return Err((405, "Method Not Allowed", "the upgrade must be a GET"));
    }
    // A page in the user's browser may open a WebSocket to any address, loopback included, with
    // the browser's cookies: the tunnel is for SSH clients only.
    if head.has_origin {
        return Err((
            403,
            "Forbidden",
            "a web page's request (it has Origin): the tunnel is for SSH clients",
        ));
    }
    if !head.connection_upgrade {
        return Err((400, "Bad Request", "Connection does not list upgrade"));
    }
    if head.ws_version.as_deref().map(str::trim) != Some(VERSION) {
        return Err((426, "Upgrade Required", "Sec-WebSocket-Version is not 13"));
    }
    match head.ws_key.as_deref().map(str::trim) {
        Some(key) if !key.is_empty() => Ok(key),
        _ => Err((400, "Bad Request", "no Sec-WebSocket-Key")),
    }
}

/// Answers `head` (a WebSocket upgrade on a path we serve) with 101 and returns the tunnel;
/// a request that breaks the handshake gets a 4xx answer and an error.
///
/// # Errors
/// An invalid upgrade request, or the connection failing while we answer.
pub async fn accept<S>(mut stream: S, head: &Head) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = match check(head) {
        Ok(key) => key,
        Err((status, reason, why)) => {
            let body = format!("{why}\n");
            let _ = http::respond(&mut stream, Some(&head.method), status, reason, &body).await;
            return Err(UpgradeError::Invalid(why));
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // A client may send frames right behind its request: they are the tunnel's first bytes.
    let first_frames = head.raw.get(head.len..).unwrap_or_default();
    Ok(WsStream::new(
        stream,
        Role::Server,
        first_frames,
        MAX_RECEIVE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    #[tokio::test]
    async fn a_real_client_handshakes_and_talks() {
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        let client = tokio::spawn(async move {
            let (mut ws, response) =
                tokio_tungstenite::client_async("ws://hub/user/a/sshd/", client_io)
                    .await
                    .unwrap();
            assert_eq!(response.status(), 101);
            ws.send(Message::binary(b"SSH-2.0-x\r\n".to_vec()))
                .await
                .unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert_eq!(reply, Message::binary(b"SSH-2.0-y\r\n".to_vec()));
        });
        let head = http::read_head(&mut server_io, Bytes::new()).await.unwrap();
        assert!(head.upgrade);
        let mut ws = accept(server_io, &head).await.unwrap();
        let mut line = [0u8; 11];
        ws.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"SSH-2.0-x\r\n");
        ws.write_all(b"SSH-2.0-y\r\n").await.unwrap();
        ws.flush().await.unwrap();
        client.await.unwrap();
    }

    #[tokio::test]
    async fn a_broken_upgrade_gets_an_http_answer() {
        let key = "Connection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\n";
        let from_a_page = format!("{key}Origin: https://example.org\r\n");
        let cases: [(&str, &str); 4] = [
            (&from_a_page, "403"),
            (
                "Connection: upgrade\r\nSec-WebSocket-Version: 13\r\n",
                "400",
            ),
            (
                "Connection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a\r\n",
                "426",
            ),
            (
                "Connection: close\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\n",
                "400",
            ),
        ];
        for (headers, status) in cases {
            let (mut far, mut near) = tokio::io::duplex(4096);
            let req = format!("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{headers}\r\n");
            far.write_all(req.as_bytes()).await.unwrap();
            let head = http::read_head(&mut near, Bytes::new()).await.unwrap();
            assert!(accept(near, &head).await.is_err(), "{headers}");
            let mut answer = String::new();
            far.read_to_string(&mut answer).await.unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{headers}: {answer}"
            );
        }
    }
}
