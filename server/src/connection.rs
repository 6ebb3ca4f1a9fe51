//! One accepted connection: tell its dialect, answer HTTP, upgrade WebSockets, and hand SSH bytes
//! to the backend.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::Arrival;
use crate::backend::Keepalive;
use crate::dialect::{self, Dialect};
use crate::http;
use crate::prefixed::Prefixed;
use crate::read_ahead::ReadAhead;
use crate::upgrade;
use crate::{Auth, Server};

/// Serves one connection to its end. Errors are logged here: one bad client never affects others.
/// `raw_ssh` says whether SSH without a WebSocket (and so without a token) is served here.
/// `arrival` lasts until the peer has said what it is; `cancel` ends the connection at shutdown.
pub async fn handle<S>(
    mut stream: S,
    server: Arc<Server>,
    raw_ssh: bool,
    arrival: Arrival,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(sniffed) = arrival.wait(dialect::sniff(&mut stream)).await else {
        return;
    };
    let dialect = match sniffed {
        Ok(d) => d,
        Err(e) => {
            warn!(%e, "closing connection before it said anything useful");
            return;
        }
    };
    match dialect {
        Dialect::Probe => debug!("empty connection (readiness probe)"),
        Dialect::Unknown(first) => {
            warn!(first_bytes = %escape(&first), "closing connection: neither HTTP nor SSH")
        }
        Dialect::Ssh(_) if !raw_ssh => {
            warn!("closing raw ssh connection: with --auth hub, a TCP listener takes authenticated WebSockets only")
        }
        Dialect::Ssh(first) => {
            let _slot = match arrival.admit() {
                Ok(slot) => slot,
                Err(full) => {
                    warn!(%full, "closing raw ssh connection");
                    return;
                }
            };
            info!("raw ssh connection");
            // The raw dialect is jupyter-server-proxy's: keep its socket drained (see ReadAhead).
            let stream = ReadAhead::new(Prefixed::new(first, stream));
            // The client behind jupyter-server-proxy is not ours to see: it may be websocat.
            serve_ssh(stream, &server, Keepalive::Eager, cancel).await;
        }
        Dialect::Http(first) => serve_http(stream, first, &server, arrival, cancel).await,
    }
}

async fn serve_ssh<S>(stream: S, server: &Server, keepalive: Keepalive, cancel: CancellationToken)
where
    S: AsyncBufRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = server.backend.serve(stream, keepalive, cancel).await {
        warn!(%e, "ssh session failed");
    }
}

async fn serve_http<S>(
    mut stream: S,
    first: Bytes,
    server: &Server,
    arrival: Arrival,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(head) = arrival.wait(http::read_head(&mut stream, first)).await else {
        return;
    };
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            warn!(%e, "closing connection: bad HTTP request");
            let _ = http::respond(&mut stream, None, 400, "Bad Request", "bad request\n").await;
            return;
        }
    };
    let _slot = match arrival.admit() {
        Ok(slot) => slot,
        Err(full) => {
            warn!(%full, "refusing request");
            let body = format!("{full}: try again when a session has ended\n");
            let (status, reason) = (429, "Too Many Connections");
            let _ = http::respond(&mut stream, Some(&head.method), status, reason, &body).await;
            return;
        }
    };
    let path = head.path.split('?').next().unwrap_or_default().to_owned();
    if !http::is_tunnel_path(&head.path) {
        info!(method = %head.method, %path, "404 for a path hubsshd does not serve");
        let body = "hubsshd serves its tunnel at / and at .../sshd/ only\n";
        let _ = http::respond(&mut stream, Some(&head.method), 404, "Not Found", body).await;
        return;
    }
    if !head.upgrade {
        let (status, reason, body) = match head.method.as_str() {
            "GET" | "HEAD" => (200, "OK", status_text(server)),
            _ => (
                405,
                "Method Not Allowed",
                "hubsshd answers GET and WebSocket upgrades only\n".into(),
            ),
        };
        let _ = http::respond(&mut stream, Some(&head.method), status, reason, &body).await;
        return;
    }
    if let Auth::Hub(hub) = &server.auth {
        let check = hub.check(head.authorization.as_deref());
        let Some(verdict) = until_cancelled(&cancel, check).await else {
            return;
        };
        if let Some((status, reason, body)) = verdict.refusal() {
            info!(%path, status, "websocket refused");
            let _ = http::respond(&mut stream, Some(&head.method), status, reason, &body).await;
            return;
        }
    }
    let keepalive = Keepalive::for_user_agent(head.user_agent.as_deref());
    let Some(ws) = until_cancelled(&cancel, upgrade::accept(stream, &head)).await else {
        return;
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            warn!(%e, %path, "websocket handshake failed");
            return;
        }
    };
    info!(%path, ?keepalive, "websocket tunnel open");
    serve_ssh(ws, server, keepalive, cancel).await;
}

/// `work`, unless the sessions are ended first (shutdown's grace period is over): the steps before
/// SSH have timeouts of their own, but longer than that grace period.
async fn until_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = cancel.cancelled() => {
            debug!("shutting down: closing a connection that had not reached SSH");
            None
        }
    }
}

fn status_text(server: &Server) -> String {
    format!(
        "hubsshd {} is running (backend: {}). Connect with: ssh -o ProxyCommand='hubssh proxy <this URL>' host\n",
        env!("CARGO_PKG_VERSION"),
        server.backend.name()
    )
}

/// Printable form of a client's first bytes, for the log (at most 32 of them).
fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(32) {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_is_printable() {
        assert_eq!(super::escape(b"ab\x00\n c"), "ab\\x00\\x0a c");
    }
}
