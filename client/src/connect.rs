//! Opens the tunnel: TCP, then TLS for `wss://`, then the WebSocket handshake with the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hubssh_wire::{Role, WsStream};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::either::Either;
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::error::{self, ConnectError};
use crate::net_proxy::HttpProxy;
use crate::token::Token;

/// The transport under the WebSocket.
pub type Transport = Either<TcpStream, TlsStream<TcpStream>>;

/// How long opening the tunnel (TCP, TLS and the handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest message accepted from the server. hubsshd sends at most 256 KiB and
/// jupyter-server-proxy forwards one read (at most 256 KiB) per message; messages are streamed,
/// never held whole, so the limit only marks a peer gone wrong.
pub const MAX_RECEIVE: usize = 16 * 1024 * 1024;

/// What the connection needs besides the endpoint.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub token: Option<Token>,
    /// TLS settings for `wss://`; required for TLS endpoints.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// An HTTP proxy to reach the hub through (CONNECT).
    pub proxy: Option<HttpProxy>,
}

/// Opens the WebSocket to `endpoint`.
///
/// # Errors
/// Each way the hub or the network can refuse, as a [`ConnectError`] a person understands.
pub async fn connect(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
) -> Result<WsStream<Transport>, ConnectError> {
    let fut = async {
        let transport = transport(endpoint, opts).await?;
        handshake(endpoint, opts, transport).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            authority: endpoint.authority(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })?
}

/// The connection to `endpoint`'s host: TCP, directly or through the HTTP proxy, then TLS for
/// `wss://`/`https://`.
///
/// # Errors
/// DNS, TCP, proxy and TLS failures, each named.
pub async fn transport(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
) -> Result<Transport, ConnectError> {
    let tcp = match &opts.proxy {
        Some(proxy) => proxy.connect(&endpoint.host_port()).await?,
        None => tcp(endpoint).await?,
    };
    Ok(if endpoint.tls {
        Either::Right(tls(endpoint, opts, tcp).await?)
    } else {
        Either::Left(tcp)
    })
}

async fn tcp(endpoint: &Endpoint) -> Result<TcpStream, ConnectError> {
    let authority = endpoint.authority();
    let addrs: Vec<_> = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| ConnectError::Dns {
            host: endpoint.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::Dns {
            host: endpoint.host.clone(),
            reason: "no addresses".into(),
        });
    }
    match connect_first(&addrs).await {
        Ok(stream) => {
            stream.set_nodelay(true).ok();
            Ok(stream)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(ConnectError::Refused { authority })
        }
        Err(e) => Err(ConnectError::Tcp {
            authority,
            reason: e.to_string(),
        }),
    }
}

/// While an address has not answered, how long before the next one is tried as well (RFC 8305's
/// connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to whichever of `addrs` answers first, as RFC 8305 (Happy Eyeballs) does: address
/// families take turns, and the next address is tried as soon as one fails or has not answered
/// within [`ATTEMPT_DELAY`], those still connecting kept. An IPv6 route that drops packets
/// silently then costs a quarter of a second, not the whole connect timeout.
///
/// # Errors
/// Once every address has failed: a refusal if any refused (nothing listens: the clearest
/// message), else the last error (`InvalidInput` if there are none).
pub async fn connect_first(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut next = interleaved(addrs).into_iter();
    let mut attempts = tokio::task::JoinSet::new(); // dropped: the losers are aborted
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no addresses");
    let mut refused = None;
    loop {
        if attempts.is_empty() {
            match next.next() {
                Some(addr) => attempts.spawn(attempt(addr)),
                None => return Err(refused.unwrap_or(last)),
            };
        }
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        refused.get_or_insert(e);
                    } else {
                        last = e;
                    }
                    if let Some(addr) = next.next() {
                        attempts.spawn(attempt(addr));
                    }
                }
                Some(Err(e)) => last = std::io::Error::other(e),
                None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if next.len() > 0 => {
                if let Some(addr) = next.next() {
                    attempts.spawn(attempt(addr));
                }
            }
        }
    }
}

async fn attempt(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await;
    match &stream {
        Ok(_) => debug!(%addr, "tcp connected"),
        Err(e) => debug!(%addr, %e, "tcp connect failed"),
    }
    stream
}

/// `addrs` with the families taking turns, the first address's family first (the resolver's
/// preference).
fn interleaved(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (std::collections::VecDeque<_>, std::collections::VecDeque<_>) =
        addrs
            .iter()
            .copied()
            .partition(|a| a.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    while !same.is_empty() || !other.is_empty() {
        out.extend(same.pop_front());
        out.extend(other.pop_front());
    }
    out
}

async fn tls(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let config = opts
        .tls
        .clone()
        .ok_or_else(|| ConnectError::Setup("TLS endpoint without TLS settings".into()))?;
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| ConnectError::Tls {
        host: endpoint.host.clone(),
        reason: e.to_string(),
    })?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls {
            host: endpoint.host.clone(),
            reason: tls_reason(&e),
        })
}

/// rustls wraps its error in an io::Error; dig it out so the message names the certificate
/// problem and what to do about that one: a private CA, a wrong host name and a wrong clock are
/// fixed in different places.
fn tls_reason(err: &std::io::Error) -> String {
    use rustls::CertificateError as Cert;
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            let todo = match c {
                Cert::UnknownIssuer | Cert::BadSignature => {
                    ". If the hub uses a private CA, pass --cacert FILE or set SSL_CERT_FILE"
                }
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    ". Check the host name in the URL: the certificate names another"
                }
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. } => {
                    ". Check this computer's clock; if it is right, the hub's certificate needs renewing"
                }
                _ => "",
            };
            format!("the server's certificate is not trusted: {c}{todo}")
        }
        Some(other) => other.to_string(),
        None => err.to_string(),
    }
}

/// `Authorization: token T`, marked sensitive so it is never printed.
///
/// # Errors
/// A token with characters an HTTP header cannot carry.
pub fn authorization(token: &Token) -> Result<HeaderValue, ConnectError> {
    let mut value = HeaderValue::from_str(&format!("token {}", token.expose())).map_err(|_| {
        ConnectError::Setup("the token contains characters not allowed in an HTTP header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Longest response head accepted from the server or a proxy in front of it.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Most response headers looked at.
const MAX_HEADERS: usize = 64;

/// The upgrade request (RFC 6455 4.1) with our token, read back to its response head; the
/// tunnel starts with whatever the server sent behind that head.
async fn handshake(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    mut transport: Transport,
) -> Result<WsStream<Transport>, ConnectError> {
    let url = endpoint.url.to_string();
    let failed = |reason: String| ConnectError::Handshake {
        url: url.clone(),
        reason,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(
        "user-agent",
        HeaderValue::from_static(concat!("hubssh/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(token) = &opts.token {
        headers.insert("authorization", authorization(token)?);
    }
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let mut head = format!(
        "GET {} HTTP/1.1\r\n",
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    )
    .into_bytes();
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let io = |e: std::io::Error| failed(e.to_string());
    transport.write_all(&head).await.map_err(io)?;
    transport.flush().await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(4096);
    let (status, reason, location, accept, upgrade, len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                };
                break (
                    response.code.unwrap_or_default(),
                    response.reason.unwrap_or_default().to_owned(),
                    header("location"),
                    header("sec-websocket-accept"),
                    header("upgrade"),
                    len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(failed("the response head is too large".into()))
            }
            Err(e) => return Err(failed(format!("not an HTTP response ({e})"))),
        }
        if transport.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(failed(
                "the connection closed before the server answered".into(),
            ));
        }
    };
    if status != 101 {
        return Err(error::from_status(
            endpoint,
            status,
            &reason,
            location.as_deref(),
            opts.token.is_some(),
        ));
    }
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(failed(
            "the server answered 101 without upgrading to a WebSocket".into(),
        ));
    }
    if accept.as_deref() != Some(derive_accept_key(&key).as_str()) {
        return Err(failed(
            "the server accepted the upgrade with a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    debug!(status, "websocket open");
    Ok(WsStream::new(
        transport,
        Role::Client,
        &buf[len..],
        MAX_RECEIVE,
    ))
}

#[cfg(test)]
mod tests {

    #[test]
    fn each_certificate_problem_says_what_to_do() {
        use rustls::CertificateError as Cert;
        let reason =
            |c: Cert| tls_reason(&std::io::Error::other(rustls::Error::InvalidCertificate(c)));
        assert!(reason(Cert::UnknownIssuer).contains("--cacert"));
        let name = reason(Cert::NotValidForName);
        assert!(
            name.contains("host name") && !name.contains("--cacert"),
            "{name}"
        );
        for time in [Cert::Expired, Cert::NotValidYet] {
            let r = reason(time);
            assert!(r.contains("clock") && !r.contains("--cacert"), "{r}");
        }
        let other = tls_reason(&std::io::Error::other(rustls::Error::HandshakeNotComplete));
        assert!(!other.contains("--cacert"), "{other}");
    }
    use super::*;

    #[test]
    fn families_take_turns_the_resolvers_first() {
        let a: Vec<SocketAddr> = [
            "[::1]:1",
            "[::2]:1",
            "[::3]:1",
            "127.0.0.1:1",
            "127.0.0.2:1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let order: Vec<String> = interleaved(&a).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            order,
            [
                "[::1]:1",
                "127.0.0.1:1",
                "[::2]:1",
                "127.0.0.2:1",
                "[::3]:1"
            ]
        );
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
    /// neither succeeds nor fails for a couple of minutes (a blackholed route, on loopback).
    fn blackhole() -> (
        tokio::net::TcpListener,
        Vec<std::net::TcpStream>,
        SocketAddr,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Fill the queue; stop once a connect stops completing.
        for _ in 0..8 {
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
            match s {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        (listener, fillers, addr)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_does_not_hold_up_the_next() {
        let (_hole, _fillers, hole) = blackhole();
        let alone = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(hole)).await;
        assert!(alone.is_err(), "the blackholed address answered: {alone:?}");
        let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good_addr = good.local_addr().unwrap();
        // The deadline only bounds the test: a blackholed connect alone takes minutes.
        let stream =
            tokio::time::timeout(Duration::from_secs(20), connect_first(&[hole, good_addr]))
                .await
                .expect("still waiting on the blackholed address")
                .expect("connect");
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
    }

    #[tokio::test]
    async fn every_address_refused_is_refused() {
        // Bound and never listening: refused, and no other test can take the port meanwhile.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap();
        let e = connect_first(&[addr, addr]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
