//! `hubssh proxy`: open the tunnel, then bridge stdin/stdout to it until either side ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hubssh_wire::WsStream;

use crate::bridge::{self, BridgeEnd, BridgeError, BridgeOptions};
use crate::commands::{self, Net};
use crate::connect::{self, ConnectOptions, Transport};
use crate::endpoint::{Endpoint, EndpointError};
use crate::error::ConnectError;
use crate::store::{self, Store, StoreError};
use crate::token::{self, Token, TokenError};

/// How long queued output may take to reach ssh once the tunnel has ended.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Everything `hubssh proxy` is told.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// A tunnel URL, or a name added with `hubssh config add`.
    pub target: String,
    pub token_file: Option<PathBuf>,
    pub net: Net,
    /// Start the server if it is not running (a configured name may ask for it too).
    pub start: bool,
    pub bridge: BridgeOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no host named {0:?}: add it with `hubssh config add {0} --hub URL`, or give a URL")]
    UnknownName(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
}

/// Where a target (a URL or a configured name) leads.
#[derive(Debug)]
pub struct Resolved {
    pub url: String,
    /// The configured name asks for `--start`.
    pub start: bool,
    /// `--token-file`, else the environment, else the login saved for the URL's hub.
    pub token: Option<Token>,
}

/// Resolves `target` with hubssh's saved config.
///
/// # Errors
/// An unknown name, an unreadable config or token file.
pub fn resolve(target: &str, token_file: Option<&Path>) -> Result<Resolved, ProxyError> {
    // The saved config is read only when it is needed: a URL with a token of its own works even
    // without a config directory or with a damaged config file.
    let load = || store::path().and_then(|p| Store::load(&p));
    // A name is what `config add` accepts; anything else is taken as a URL (and explained as one).
    let (url, start) = if !crate::ssh_config::valid_name(target) {
        (target.to_owned(), false)
    } else {
        let store = load()?;
        let host = store
            .hosts
            .get(target)
            .ok_or_else(|| ProxyError::UnknownName(target.to_owned()))?;
        (host.url(), host.start)
    };
    let env = |name: &str| std::env::var(name).ok();
    let token = match token::load(token_file, &url, env)? {
        Some(t) => Some(t),
        None => {
            let endpoint = Endpoint::parse(&url)?;
            match load() {
                Ok(store) => store
                    .login_for_url(endpoint.url.as_str())
                    .map(|l| l.token()),
                // No config directory (HOME unset): there is no saved login either.
                Err(StoreError::NoDir) => None,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if token.is_none() {
        if let Some(hub) = token::foreign_hub(&url, env) {
            eprintln!("hubssh: JUPYTERHUB_API_TOKEN is not sent: it is for the hub at {hub}, not this one (set HUBSSH_TOKEN to send a token anyway)");
        }
    }
    Ok(Resolved { url, start, token })
}

/// Runs the proxy on this process's stdin and stdout.
///
/// # Errors
/// Why the tunnel could not be opened or how it was lost; the caller prints it and exits non-zero.
pub async fn run(config: ProxyConfig) -> Result<BridgeEnd, ProxyError> {
    let Resolved {
        url,
        start: start_by_name,
        token,
    } = resolve(&config.target, config.token_file.as_deref())?;
    let endpoint = Endpoint::parse(&url)?;
    if token.is_some() && !endpoint.tls && !endpoint.is_loopback() {
        tracing::warn!(host = %endpoint.host, "sending the token unencrypted (ws:// to a host that is not this machine); use https://");
    }
    let opts = config.net.options(&endpoint, token.clone())?;
    let first = connect::connect(&endpoint, &opts).await;
    let first = match first {
        Err(ConnectError::EndpointMissing { .. }) if token.is_some() => {
            named_server_stopped(&config.net, &endpoint, &url, token.clone())
                .await
                .map_or(first, Err)
        }
        other => other,
    };
    let ws = match first {
        Err(ConnectError::ServerNotRunning { .. }) if config.start || start_by_name => {
            let (user, server) = commands::user_and_server(&url)
                .ok_or_else(|| anyhow::anyhow!("cannot tell the user and server from {url}"))?;
            let api = config.net.api(&endpoint.hub_url(), token)?;
            commands::start_server(&api, &user, &server).await?;
            connect_after_start(&endpoint, &opts).await?
        }
        other => other?,
    };
    let mut input = crate::stdio::stdin();
    let (mut output, writer) = crate::stdio::stdout();
    let end = bridge::bridge(ws, &mut input, &mut output, config.bridge).await;
    drop(output);
    // A stdout thread finishes what is queued, then stops.
    let deadline = Instant::now() + OUTPUT_DRAIN;
    while writer.as_ref().is_some_and(|w| !w.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(end?)
}

/// A request for a stopped named server (`/user/NAME/SERVER/sshd/`) reaches the user's default
/// server when that one runs (the proxy routes by prefix), which answers like a server without
/// the endpoint. Asks the hub whether the named server runs; the error to report if it does not.
async fn named_server_stopped(
    net: &Net,
    endpoint: &Endpoint,
    url: &str,
    token: Option<Token>,
) -> Option<ConnectError> {
    let (user, server) = commands::user_and_server(url)?;
    if server.is_empty() {
        return None;
    }
    let api = net.api(&endpoint.hub_url(), token).ok()?;
    let answer = api
        .call("GET", &commands::users_path(&user), None)
        .await
        .ok()?;
    if answer.status != 200 {
        return None;
    }
    let model = answer.json("GET /hub/api/users").ok()?;
    // No `servers` at all: the token may read the user but not their servers, so the hub has
    // not said whether this one runs.
    if model.get("servers")?[&server]["ready"] == true {
        return None;
    }
    Some(ConnectError::ServerNotRunning {
        url: endpoint.url.to_string(),
        why: format!("the hub lists no running server {server:?} for {user}"),
        hub: endpoint.hub_url(),
    })
}

/// Connects once the hub says the server is ready; the proxy's route may lag a moment behind.
async fn connect_after_start(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
) -> Result<WsStream<Transport>, ConnectError> {
    let mut tries = 0;
    loop {
        match connect::connect(endpoint, opts).await {
            Err(ConnectError::ServerNotRunning { .. }) if tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}
