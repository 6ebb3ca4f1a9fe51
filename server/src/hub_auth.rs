//! `--auth hub`: WebSocket clients must present a JupyterHub token that grants access to this
//! server. The token is checked with `GET $JUPYTERHUB_API_URL/user` (the hub answers with the
//! token owner and the token's scopes), the same check jupyter-server's hub auth makes.
//!
//! Verdicts are cached for a short time, keyed by a SHA-256 of the token (the token itself is
//! never stored or logged). A hub that cannot be asked is a 503, never an accept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// How long the hub's yes is trusted (jupyter-server's hub auth trusts it for 5 minutes).
const ALLOW_TTL: Duration = Duration::from_secs(30);
/// How long a no is remembered: long enough to blunt a flood of bad tokens, short enough that a
/// token granted access a moment later works.
const DENY_TTL: Duration = Duration::from_secs(5);
/// Cached verdicts kept at most; past this the expired ones go, then all of them.
const CACHE_ENTRIES: usize = 4096;
/// Time for one question to the hub, connect to last byte.
const HUB_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest hub answer read (a user model with its scopes is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// Where the hub API is and which server this hubsshd serves.
#[derive(Debug)]
pub struct HubAuth {
    api: ApiUrl,
    user: String,
    server_name: String,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
}

/// The outcome of checking one `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token's owner (`name`) may use this server.
    Allow { name: String },
    /// No `Authorization: token|bearer T` header.
    NoToken,
    /// The hub does not know the token (wrong, revoked, expired).
    BadToken,
    /// A valid token (owned by `name`) without access to this server.
    NoAccess { name: String },
    /// The hub could not be asked or gave an answer we cannot read.
    HubUnavailable(String),
}

impl Verdict {
    /// The HTTP status and a one-line body for a refusal; `None` for [`Verdict::Allow`].
    pub fn refusal(&self) -> Option<(u16, &'static str, String)> {
        match self {
            Verdict::Allow { .. } => None,
            Verdict::NoToken => Some((
                401,
                "Unauthorized",
                "a hub API token is required: send Authorization: token <token>\n".into(),
            )),
            Verdict::BadToken => Some((
                403,
                "Forbidden",
                "the hub does not accept this token (wrong, revoked or expired)\n".into(),
            )),
            Verdict::NoAccess { .. } => Some((
                404,
                "Not Found",
                "this token has no access to this server\n".into(),
            )),
            // Why goes to hubsshd's log only: the client has not been authenticated, and the
            // reason names the hub's internal address.
            Verdict::HubUnavailable(_) => Some((
                503,
                "Service Unavailable",
                "hubsshd cannot check tokens with the hub just now: try again shortly\n".into(),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubAuthError {
    #[error("hub API URL {0:?}: {1}")]
    BadUrl(String, &'static str),
}

impl HubAuth {
    pub fn new(api_url: &str, user: String, server_name: String) -> Result<Self, HubAuthError> {
        Ok(HubAuth {
            api: ApiUrl::parse(api_url)?,
            user,
            server_name,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Who this server belongs to, for the log.
    pub fn describe(&self) -> String {
        format!(
            "server {}/{} via {}",
            self.user, self.server_name, self.api.original
        )
    }

    /// Checks the value of a request's `Authorization` header.
    pub async fn check(&self, authorization: Option<&str>) -> Verdict {
        let Some(token) = authorization.and_then(token_from_header) else {
            return Verdict::NoToken;
        };
        let key = digest(token);
        if let Some(v) = self.cached(&key) {
            debug!("token verdict from cache");
            return v;
        }
        let verdict = match self.ask_hub(token).await {
            Ok(v) => v,
            Err(why) => {
                warn!(%why, "cannot check a token with the hub");
                return Verdict::HubUnavailable(why);
            }
        };
        match &verdict {
            Verdict::Allow { name } => info!(%name, "hub token accepted"),
            Verdict::NoAccess { name } => info!(%name, "hub token has no access to this server"),
            other => info!(verdict = ?other, "hub token refused"),
        }
        self.remember(key, verdict.clone());
        verdict
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, verdict) = cache.get(key)?;
        (Instant::now() < *expires).then(|| verdict.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: Verdict) {
        let ttl = match verdict {
            Verdict::Allow { .. } => ALLOW_TTL,
            _ => DENY_TTL,
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (expires, _)| now < *expires);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (now + ttl, verdict));
    }

    async fn ask_hub(&self, token: &str) -> Result<Verdict, String> {
        let (status, body) = tokio::time::timeout(HUB_TIMEOUT, self.api.get("/user", token))
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {HUB_TIMEOUT:?}",
                    self.api.original
                )
            })?
            .map_err(|e| format!("{}: {e}", self.api.original))?;
        match status {
            200 => {}
            401 | 403 => return Ok(Verdict::BadToken),
            s => return Err(format!("the hub answered HTTP {s} to GET /user")),
        }
        let model: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the hub's answer to GET /user is not JSON: {e}"))?;
        let name = model["name"].as_str().unwrap_or_default().to_owned();
        let scopes = model["scopes"]
            .as_array()
            .ok_or(
                "the hub's answer to GET /user has no scopes (JupyterHub 2.0 or newer is needed)",
            )?
            .iter()
            .filter_map(|s| s.as_str());
        if grants_access(scopes, &self.user, &self.server_name) {
            Ok(Verdict::Allow { name })
        } else {
            Ok(Verdict::NoAccess { name })
        }
    }
}

/// The token in `token T` or `bearer T` (either case), as JupyterHub reads it.
fn token_from_header(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    let ok = scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer");
    (ok && !token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Whether `scopes` include access to `user`'s server `server_name`: unfiltered
/// `access:servers`, or filtered to this user or to this very server.
pub fn grants_access<'a>(
    scopes: impl IntoIterator<Item = &'a str>,
    user: &str,
    server_name: &str,
) -> bool {
    let by_user = format!("access:servers!user={user}");
    let by_server = format!("access:servers!server={user}/{server_name}");
    scopes
        .into_iter()
        .any(|s| s == "access:servers" || s == by_user || s == by_server)
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `http://host:port/prefix` of the hub API. Inside a hub deployment the API is plain HTTP on
/// the cluster network (z2jh: `http://hub:8081/hub/api`).
#[derive(Debug)]
struct ApiUrl {
    original: String,
    /// Host to connect to (an IPv6 address without brackets) and port.
    host: String,
    port: u16,
    /// `host:port` as written in the URL, for the `Host` header.
    authority: String,
    /// Path prefix without a trailing slash, e.g. `/hub/api`.
    prefix: String,
}

impl ApiUrl {
    fn parse(url: &str) -> Result<Self, HubAuthError> {
        let bad = |why| HubAuthError::BadUrl(url.to_owned(), why);
        let usage = "expected http://host:port/hub/api";
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                return Err(bad(
                    "https hub API URLs (internal_ssl) are not supported yet; use the hub's http API URL",
                ))
            }
            None => return Err(bad(usage)),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse().map_err(|_| bad(usage))?),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['@', '[', ']']) {
            return Err(bad(usage));
        }
        Ok(ApiUrl {
            original: url.to_owned(),
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// One `GET prefix+path` with the token; returns the status and body. HTTP/1.1 with
    /// `Connection: close`; the body ends at its Content-Length or at the close.
    async fn get(&self, path: &str, token: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let request = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: token {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.prefix, self.authority
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::new();
        loop {
            if buf.len() > MAX_ANSWER {
                return Err(invalid("the hub's answer is too large"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                break;
            }
            if let Some((status, start, Some(len))) = parse_response(&buf)? {
                if len > MAX_ANSWER {
                    return Err(invalid("the hub's answer is too large"));
                }
                if buf.len() >= start + len {
                    return Ok((status, buf[start..start + len].to_vec()));
                }
            }
        }
        match parse_response(&buf)? {
            Some((status, start, _)) => Ok((status, buf[start..].to_vec())),
            None => Err(invalid("the hub closed the connection mid-answer")),
        }
    }
}

/// Status, where the body starts, and its Content-Length if given; `None` while incomplete.
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, usize, Option<usize>)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let start = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("the hub's answer is not HTTP: {e}"))),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Err(invalid(
            "the hub sent a chunked answer, which hubsshd does not read",
        ));
    }
    let len = header("content-length").and_then(|v| v.parse().ok());
    Ok(Some((response.code.unwrap_or(0), start, len)))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub that answers anything with `answer`; its API URL.
    async fn hub_answering(answer: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = conn.write_all(answer).await;
            }
        });
        format!("http://{addr}/hub/api/")
    }

    #[tokio::test]
    async fn an_impossible_content_length_is_an_error() {
        let url =
            hub_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}")
                .await;
        let api = ApiUrl::parse(&url).unwrap();
        let e = api.get("/user", "t").await.unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn reads_token_and_bearer() {
        assert_eq!(token_from_header("token abc"), Some("abc"));
        assert_eq!(token_from_header("Bearer  abc "), Some("abc"));
        assert_eq!(token_from_header("Basic abc"), None);
        assert_eq!(token_from_header("token"), None);
        assert_eq!(token_from_header("token a b"), None);
    }

    #[test]
    fn access_scopes() {
        let yes = |s: &[&str]| grants_access(s.iter().copied(), "alice", "");
        assert!(yes(&["access:servers"]));
        assert!(yes(&["read:users", "access:servers!user=alice"]));
        assert!(yes(&["access:servers!server=alice/"]));
        assert!(!yes(&["access:servers!user=bob"]));
        assert!(!yes(&["access:servers!server=alice/other"]));
        assert!(!yes(&["access:servers!user=alice2", "servers!user=alice"]));
        assert!(grants_access(
            ["access:servers!server=alice/gpu"],
            "alice",
            "gpu"
        ));
    }

    #[test]
    fn parses_api_urls() {
        let u = ApiUrl::parse("http://hub:8081/hub/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("hub", 8081, "/hub/api")
        );
        let u = ApiUrl::parse("http://[::1]/hub/api").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 80, "[::1]")
        );
        let u = ApiUrl::parse("http://[::1]:8081").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 8081, "")
        );
        assert!(ApiUrl::parse("https://hub/hub/api").is_err());
        assert!(ApiUrl::parse("hub:8081").is_err());
    }

    #[test]
    fn refusals_have_statuses() {
        assert_eq!(Verdict::NoToken.refusal().unwrap().0, 401);
        assert_eq!(Verdict::BadToken.refusal().unwrap().0, 403);
        assert_eq!(
            Verdict::NoAccess { name: "b".into() }.refusal().unwrap().0,
            404
        );
        let unavailable = Verdict::HubUnavailable("http://10.0.0.5:8081/hub/api: refused".into());
        assert!(!unavailable.refusal().unwrap().2.contains("10.0.0.5"));
        assert_eq!(
            Verdict::HubUnavailable("x".into()).refusal().unwrap().0,
            503
        );
        assert!(Verdict::Allow { name: "a".into() }.refusal().is_none());
    }
}
