//! `hubssh proxy`: open the tunnel, then bridge stdin/stdout to it until either side ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bridge::{self, BridgeEnd, BridgeError, BridgeOptions};
use crate::connect::{self, ConnectOptions};
use crate::endpoint::{Endpoint, EndpointError};
use crate::error::ConnectError;
use crate::net_proxy;
use crate::tls::{self, TlsSetupError};
use crate::token::{self, TokenError};

/// How long queued output may take to reach ssh once the tunnel has ended.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Everything `hubssh proxy` is told.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub cacert: Option<PathBuf>,
    /// `--insecure`: do not check the hub's certificate.
    pub insecure: bool,
    /// `--proxy URL`: overrides the proxy environment variables.
    pub proxy: Option<String>,
    pub bridge: BridgeOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
}

/// Runs the proxy on this process's stdin and stdout.
///
/// # Errors
/// Why the tunnel could not be opened or how it was lost; the caller prints it and exits non-zero.
pub async fn run(config: ProxyConfig) -> Result<BridgeEnd, ProxyError> {
    let endpoint = Endpoint::parse(&config.url)?;
    let token = token::load(config.token_file.as_deref(), |name| {
        std::env::var(name).ok()
    })?;
    if token.is_some() && !endpoint.tls && !endpoint.is_loopback() {
        tracing::warn!(host = %endpoint.host, "sending the token unencrypted (ws:// to a host that is not this machine); use https://");
    }
    let tls = if endpoint.tls {
        Some(tls::client_config(
            config.cacert.as_deref(),
            config.insecure,
        )?)
    } else {
        None
    };
    let proxy = net_proxy::choose(
        config.proxy.as_deref(),
        |name| std::env::var(name).ok(),
        endpoint.tls,
        &endpoint.host,
        endpoint.port,
    )?;
    let opts = ConnectOptions { token, tls, proxy };
    let ws = connect::connect(&endpoint, &opts).await?;
    let input = crate::stdio::stdin_reader();
    let (output, writer) = crate::stdio::stdout_writer();
    let end = bridge::bridge(ws, input, output, config.bridge).await;
    // The output sender is gone with the bridge: the writer finishes what is queued, then stops.
    let deadline = Instant::now() + OUTPUT_DRAIN;
    while !writer.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(end?)
}
