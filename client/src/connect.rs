//! Opens the tunnel: TCP, then TLS for `wss://`, then the WebSocket handshake with the token.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
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
/// jupyter-server-proxy forwards one read (at most 256 KiB) per message.
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
) -> Result<WebSocketStream<Transport>, ConnectError> {
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
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                debug!(%addr, "tcp connected");
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ConnectError::Refused { authority }
        }
        Some(e) => ConnectError::Tcp {
            authority,
            reason: e.to_string(),
        },
        None => ConnectError::Dns {
            host: endpoint.host.clone(),
            reason: "no addresses".into(),
        },
    })
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

/// rustls wraps its error in an io::Error; dig it out so the message names the certificate problem.
fn tls_reason(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the server's certificate is not trusted ({c:?})")
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

async fn handshake(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    transport: Transport,
) -> Result<WebSocketStream<Transport>, ConnectError> {
    let url = endpoint.url.to_string();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Handshake {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let headers = request.headers_mut();
    headers.insert(
        "user-agent",
        HeaderValue::from_static(concat!("hubssh/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(token) = &opts.token {
        headers.insert("authorization", authorization(token)?);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_RECEIVE))
        .max_frame_size(Some(MAX_RECEIVE));
    match tokio_tungstenite::client_async_with_config(request, transport, Some(config)).await {
        Ok((ws, response)) => {
            debug!(status = %response.status(), "websocket open");
            Ok(ws)
        }
        Err(WsError::Http(response)) => {
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            Err(error::from_status(
                endpoint,
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                location,
                opts.token.is_some(),
            ))
        }
        Err(e) => Err(ConnectError::Handshake {
            url,
            reason: e.to_string(),
        }),
    }
}
