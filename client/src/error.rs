//! Why a tunnel could not be opened, in words a person can act on.

use crate::endpoint::Endpoint;

/// A failure to open the tunnel. Each message says what happened and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {reason}. Check the hub address and your network")]
    Dns { host: String, reason: String },
    #[error("connection refused by {authority}: nothing listens there. Check the host and port in the URL")]
    Refused { authority: String },
    #[error("cannot connect to {authority}: {reason}")]
    Tcp { authority: String, reason: String },
    #[error("no answer from {authority} within {secs} s")]
    Timeout { authority: String, secs: u64 },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("{0}")]
    Setup(String),
    #[error("HTTP proxy {proxy}: {reason}. Check --proxy or HTTPS_PROXY, or exempt the hub with NO_PROXY")]
    Proxy { proxy: String, reason: String },
    #[error("the hub refused the token (HTTP {status}): it is wrong, expired or revoked, or it gives no access to this server. Get a new one at {hub}/hub/token")]
    TokenRejected { status: u16, hub: String },
    #[error("the hub wants a token (HTTP {status}) and none was given: set HUBSSH_TOKEN or pass --token-file FILE (tokens are made at {hub}/hub/token)")]
    TokenMissing { status: u16, hub: String },
    #[error("nothing at {url} (HTTP 404): check the user and server names in the URL, and that the token may access that server")]
    NotFound { url: String },
    #[error("the server at {url} is serving as many connections as it takes (HTTP 429): end a session there or try again shortly")]
    Busy { url: String },
    #[error("the server at {url} is not running ({why}): start it with --start (hubssh proxy --start, or hubssh config add --start) or at {hub}/hub/home")]
    ServerNotRunning {
        url: String,
        why: String,
        hub: String,
    },
    #[error("the server at {url} has no sshd endpoint (redirected to {location}): install jupyter-hubssh in the server's image")]
    EndpointMissing { url: String, location: String },
    #[error("the hub redirected to {location} (HTTP {status}): check the URL")]
    Redirect { status: u16, location: String },
    #[error("the hub answered HTTP {status} {reason} at {url}")]
    Http {
        status: u16,
        reason: String,
        url: String,
    },
    #[error("websocket handshake with {url} failed: {reason}")]
    Handshake { url: String, reason: String },
}

/// Turns a refused handshake's status and `Location` into the error a person can act on.
pub fn from_status(
    endpoint: &Endpoint,
    status: u16,
    reason: &str,
    location: Option<&str>,
    had_token: bool,
) -> ConnectError {
    let url = endpoint.url.to_string();
    let hub = endpoint.hub_url();
    match status {
        401 | 403 if had_token => ConnectError::TokenRejected { status, hub },
        401 | 403 => ConnectError::TokenMissing { status, hub },
        404 => ConnectError::NotFound { url },
        429 => ConnectError::Busy { url },
        424 | 503 => ConnectError::ServerNotRunning {
            url,
            why: format!("HTTP {status}"),
            hub,
        },
        300..=399 => {
            let location = location.unwrap_or("nowhere").to_owned();
            let path = location
                .split_once("://")
                .map_or(location.as_str(), |(_, rest)| {
                    rest.find('/').map_or("/", |i| &rest[i..])
                });
            let path = path.split('?').next().unwrap_or_default();
            let ours = endpoint.url.path();
            if path.contains("/hub/login") && !had_token {
                ConnectError::TokenMissing { status, hub }
            } else if path.contains("/hub/user/") || path.contains("/hub/spawn") {
                ConnectError::ServerNotRunning {
                    url,
                    why: format!("the hub redirected to {path}"),
                    hub,
                }
            } else if ours.ends_with('/') && path == ours.trim_end_matches('/') {
                ConnectError::EndpointMissing { url, location }
            } else {
                ConnectError::Redirect { status, location }
            }
        }
        _ => ConnectError::Http {
            status,
            reason: reason.to_owned(),
            url,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_actionable_errors() {
        let e = Endpoint::parse("https://hub.example.org/user/alice/sshd/").unwrap();
        let check = |status, location: Option<&str>, token, want: &str| {
            let got = from_status(&e, status, "x", location, token).to_string();
            assert!(got.contains(want), "{status} {location:?}: {got}");
        };
        check(403, None, true, "refused the token");
        check(403, None, false, "none was given");
        check(404, None, true, "HTTP 404");
        check(429, None, true, "as many connections as it takes");
        check(503, None, true, "not running");
        check(424, None, true, "not running");
        check(302, Some("/hub/user/alice/sshd/"), true, "not running");
        check(
            302,
            Some("https://hub.example.org/hub/spawn/alice"),
            true,
            "not running",
        );
        check(302, Some("/hub/login?next=x"), false, "none was given");
        check(302, Some("/user/alice/sshd"), true, "no sshd endpoint");
        check(
            301,
            Some("https://elsewhere/"),
            true,
            "redirected to https://elsewhere/",
        );
        check(500, None, true, "HTTP 500");
        assert!(from_status(&e, 403, "", None, true)
            .to_string()
            .contains("https://hub.example.org/hub/token"));
    }
}
