//! HTTP proxies: the tunnel goes through an HTTP `CONNECT` when `--proxy URL` or the usual
//! variables say so (`HTTPS_PROXY`/`https_proxy` for `wss://`, `HTTP_PROXY`/`http_proxy` for
//! `ws://`, then `ALL_PROXY`/`all_proxy`), unless `NO_PROXY`/`no_proxy` exempts the host.
//! Credentials in the proxy URL (`http://user:pass@proxy:3128`) become `Proxy-Authorization:
//! Basic`; they are never logged.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;
use url::Url;

use crate::error::ConnectError;

/// Largest CONNECT response head read from a proxy.
const MAX_HEAD: usize = 16 * 1024;

/// Time for the proxy to answer CONNECT.
const CONNECT_ANSWER: Duration = Duration::from_secs(30);

/// A proxy to tunnel through.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    pub host: String,
    pub port: u16,
    /// `user:password`, already percent-decoded.
    credentials: Option<String>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpProxy({})", self.display())
    }
}

impl HttpProxy {
    /// Parses `http://[user:pass@]host[:port]` (a bare `host:port` means `http://`).
    pub fn parse(input: &str) -> Result<Self, ConnectError> {
        let bad = |why: &str| ConnectError::Setup(format!("proxy URL {}: {why}", redact(input)));
        let with_scheme = if input.contains("://") {
            input.to_owned()
        } else {
            format!("http://{input}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "TLS to the proxy itself (https://) is not supported; use http://",
                ))
            }
            s => return Err(bad(&format!("unsupported scheme {s}: use http://"))),
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(bad("no host")),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!url.username().is_empty()).then(|| {
            format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or_default())
            )
        });
        Ok(HttpProxy {
            host,
            port: url.port().unwrap_or(80),
            credentials,
        })
    }

    /// `host:port`, without credentials: safe for messages.
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Connects to the proxy and asks it for a tunnel to `authority` (`host:port`).
    pub async fn connect(&self, authority: &str) -> Result<TcpStream, ConnectError> {
        let proxy = self.display();
        let failed = |e: std::io::Error| ConnectError::Proxy {
            proxy: proxy.clone(),
            reason: format!("cannot connect to it: {e}"),
        };
        let addrs: Vec<_> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(failed)?
            .collect();
        let mut stream = crate::connect::connect_first(&addrs)
            .await
            .map_err(failed)?;
        stream.set_nodelay(true).ok();
        let mut request = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: hubssh/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(c) = &self.credentials {
            request.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(c.as_bytes())
            ));
        }
        request.push_str("\r\n");
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            read_head(&mut stream).await
        };
        let (status, reason) = tokio::time::timeout(CONNECT_ANSWER, exchange)
            .await
            .map_err(|_| ConnectError::Proxy {
                proxy: proxy.clone(),
                reason: format!("no answer to CONNECT within {} s", CONNECT_ANSWER.as_secs()),
            })?
            .map_err(|e| ConnectError::Proxy {
                proxy: proxy.clone(),
                reason: e.to_string(),
            })?;
        debug!(%proxy, status, "proxy answered CONNECT");
        match status {
            200..=299 => Ok(stream),
            // 407 is the standard answer; some proxies (tinyproxy) say 401 to wrong credentials.
            401 | 407 => Err(ConnectError::Proxy {
                proxy,
                reason: if self.credentials.is_some() {
                    format!("it refused the credentials in the proxy URL (HTTP {status})")
                } else {
                    format!("it wants credentials (HTTP {status}): put them in the proxy URL, http://USER:PASSWORD@proxy:port")
                },
            }),
            _ => Err(ConnectError::Proxy {
                proxy,
                reason: format!("it refused to connect to {authority} (HTTP {status} {reason})"),
            }),
        }
    }
}

/// The proxy to use for `host:port`: `explicit` (`--proxy`), else the environment (through
/// `env`), unless NO_PROXY exempts the host. `tls` picks HTTPS_PROXY over HTTP_PROXY.
pub fn choose(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    tls: bool,
    host: &str,
    port: u16,
) -> Result<Option<HttpProxy>, ConnectError> {
    if let Some(url) = explicit {
        return HttpProxy::parse(url).map(Some);
    }
    let names: [&str; 4] = if tls {
        ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let Some((name, url)) = names
        .iter()
        .filter_map(|n| env(n).map(|v| (*n, v.trim().to_owned())))
        .find(|(_, v)| !v.is_empty())
    else {
        return Ok(None);
    };
    // ALL_PROXY is most often a SOCKS proxy (for curl and the like) that a direct connection
    // does not need: one that is not http:// is passed over rather than failing every command.
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if name.eq_ignore_ascii_case("ALL_PROXY") && scheme.as_deref().is_some_and(|s| s != "http") {
        eprintln!(
            "hubssh: not using {name}={}: only http:// proxies are supported; connecting directly",
            redact(&url)
        );
        return Ok(None);
    }
    let no_proxy = env("NO_PROXY")
        .or_else(|| env("no_proxy"))
        .unwrap_or_default();
    if bypass(&no_proxy, host, port) {
        debug!(host, "NO_PROXY exempts the host");
        return Ok(None);
    }
    HttpProxy::parse(&url).map(Some).map_err(|e| match e {
        ConnectError::Setup(why) => ConnectError::Setup(format!("{name}: {why}")),
        e => e,
    })
}

/// Whether `NO_PROXY` (comma or space separated) exempts `host:port`: `*`; the host itself; a
/// domain suffix (`example.org` or `.example.org` match `hub.example.org`); either with `:port`.
pub fn bypass(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            let (name, entry_port) = split_port(&entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let name = name
                .strip_prefix("*.")
                .unwrap_or(name)
                .trim_start_matches('.');
            host == name || host.ends_with(&format!(".{name}"))
        })
}

/// `name:port` -> (`name`, port); IPv6 addresses without brackets are left whole.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            return (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (entry, None),
    }
}

/// Reads the proxy's response head; returns its status and reason. Nothing may follow the head
/// before we speak (the tunnel's first bytes are ours).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "it closed the connection instead of answering CONNECT",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = response.code.unwrap_or(0);
                let reason = response.reason.unwrap_or_default().to_owned();
                if n < buf.len() && (200..300).contains(&status) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "it sent data after accepting CONNECT",
                    ));
                }
                return Ok((status, reason));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "its answer to CONNECT is too long",
                ))
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("its answer to CONNECT is not HTTP ({e})"),
                ))
            }
        }
    }
}

/// The proxy URL with any password replaced, for messages.
fn redact(input: &str) -> String {
    match (input.find("://"), input.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &input[..s + 3], &input[at..]),
        (None, Some(at)) => format!("***{}", &input[at..]),
        _ => input.to_owned(),
    }
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn parses_proxy_urls_and_hides_passwords() {
        let p = HttpProxy::parse("http://u%40x:p%3Ass@proxy.corp:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.credentials.as_deref(), Some("u@x:p:ss"));
        assert_eq!(format!("{p:?}"), "HttpProxy(proxy.corp:3128)");
        let p = HttpProxy::parse("127.0.0.1:8888").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials),
            ("127.0.0.1", 8888, None)
        );
        assert!(HttpProxy::parse("https://proxy:443").is_err());
        assert!(HttpProxy::parse("socks5://proxy:1080").is_err());
        assert_eq!(redact("http://u:secret@proxy:1"), "http://***@proxy:1");
    }

    #[test]
    fn no_proxy_rules() {
        let no = "localhost, .internal.org,example.com:8443,10.0.0.1,[::1]";
        assert!(bypass(no, "localhost", 443));
        assert!(bypass(no, "hub.internal.org", 443));
        assert!(bypass(no, "internal.org", 443));
        assert!(!bypass(no, "notinternal.org", 443));
        assert!(bypass(no, "example.com", 8443));
        assert!(bypass(no, "hub.example.com", 8443));
        assert!(!bypass(no, "example.com", 443));
        assert!(bypass(no, "10.0.0.1", 80));
        assert!(bypass(no, "::1", 80));
        assert!(!bypass(no, "hub.example.org", 443));
        assert!(bypass("*", "anything", 1));
        assert!(!bypass("", "anything", 1));
    }

    #[test]
    fn chooses_by_scheme_and_no_proxy() {
        let env = |name: &str| match name {
            "https_proxy" => Some("http://secure-proxy:3128".to_owned()),
            "HTTP_PROXY" => Some("http://plain-proxy:3128".to_owned()),
            "NO_PROXY" => Some("localhost".to_owned()),
            _ => None,
        };
        let host = |p: Option<HttpProxy>| p.map(|p| p.host);
        assert_eq!(
            host(choose(None, env, true, "hub", 443).unwrap()).as_deref(),
            Some("secure-proxy")
        );
        assert_eq!(
            host(choose(None, env, false, "hub", 80).unwrap()).as_deref(),
            Some("plain-proxy")
        );
        assert_eq!(choose(None, env, true, "localhost", 443).unwrap(), None);
        let explicit = choose(Some("http://mine:1"), env, true, "localhost", 443).unwrap();
        assert_eq!(host(explicit).as_deref(), Some("mine"));
        assert_eq!(choose(None, |_| None, true, "hub", 443).unwrap(), None);
    }

    #[test]
    fn a_socks_all_proxy_is_passed_over_and_a_bad_variable_is_named() {
        let socks =
            |name: &str| (name == "ALL_PROXY").then(|| "socks5h://127.0.0.1:7890".to_owned());
        assert_eq!(choose(None, socks, true, "hub", 443).unwrap(), None);
        let plain = |name: &str| (name == "all_proxy").then(|| "http://p:3128".to_owned());
        let chosen = choose(None, plain, true, "hub", 443).unwrap();
        assert_eq!(chosen.map(|p| p.host).as_deref(), Some("p"));
        let https =
            |name: &str| (name == "HTTPS_PROXY").then(|| "socks5://u:secret@p:1".to_owned());
        let err = choose(None, https, true, "hub", 443)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTPS_PROXY: ") && err.contains("socks5"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }
}
