//! The HTTP side of the listener: reads a request head, decides whether it is a WebSocket upgrade
//! on a path we serve, and answers everything else with a short plain-text response.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted. Browsers and proxies stay far below this; hub tokens are short.
pub const MAX_HEAD: usize = 16 * 1024;

/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Most headers we look at in one request.
const MAX_HEADERS: usize = 64;

/// What the request head says.
#[derive(Debug)]
pub struct Head {
    /// Every byte read so far (the head and possibly the start of the body or first frame).
    pub raw: Bytes,
    pub method: String,
    pub path: String,
    pub upgrade: bool,
    /// `Authorization` header value, if any. Never logged.
    pub authorization: Option<String>,
    /// `User-Agent` header value, if any.
    pub user_agent: Option<String>,
    /// Whether the request has an `Origin` header: browsers send one with every WebSocket
    /// they open; hubssh, websocat and jupyter-server-proxy (for them) send none.
    pub has_origin: bool,
    /// Length of the head within `raw`: what follows are the client's first frames.
    pub len: usize,
    /// Whether `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key` and `Sec-WebSocket-Version`.
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("connection closed before the request head was complete")]
    Truncated,
    #[error("no complete request head within {HEAD_TIMEOUT:?}")]
    TimedOut,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the request head, starting with the bytes `already` read by the sniffer.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    already: Bytes,
) -> Result<Head, HeadError> {
    let mut buf = BytesMut::from(&already[..]);
    let fut = async {
        loop {
            if let Some(head) = parse(&buf)? {
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(HeadError::Truncated);
            }
        }
    };
    let mut head = tokio::time::timeout(HEAD_TIMEOUT, fut)
        .await
        .map_err(|_| HeadError::TimedOut)??;
    head.raw = buf.freeze();
    Ok(head)
}

fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
        Ok(httparse::Status::Complete(len)) => {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            Ok(Some(Head {
                raw: Bytes::new(),
                method: req.method.unwrap_or_default().to_owned(),
                path: req.path.unwrap_or_default().to_owned(),
                upgrade,
                authorization: header("authorization"),
                user_agent: header("user-agent"),
                has_origin: header("origin").is_some(),
                len,
                connection_upgrade: header("connection").is_some_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                }),
                ws_key: header("sec-websocket-key"),
                ws_version: header("sec-websocket-version"),
            }))
        }
    }
}

/// Whether we serve the tunnel at `path`: `/`, or any path ending in `/sshd/` (the
/// jupyter-server-proxy route `/user/<name>/sshd/`). The query string is ignored.
pub fn is_tunnel_path(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path == "/" || path.ends_with("/sshd/")
}

/// Writes a complete plain-text response to a request made with `method` (None: no request
/// could be read) and closes the write side. A HEAD gets the headers alone; a 405 says which
/// methods are allowed.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    method: Option<&str>,
    status: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let allow = if status == 405 {
        "allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{allow}connection: close\r\ncache-control: no-store\r\n\r\n",
        body.len()
    );
    if method != Some("HEAD") {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_paths() {
        let cases = [
            ("/", true),
            ("/sshd/", true),
            ("/user/alice/sshd/", true),
            ("/user/alice/gpu/sshd/", true),
            ("/user/alice/sshd/?token=x", true),
            ("/user/alice/sshd", false),
            ("/user/alice/", false),
            ("/sshdx/", false),
            ("", false),
        ];
        for (path, want) in cases {
            assert_eq!(is_tunnel_path(path), want, "{path}");
        }
    }

    async fn response(method: Option<&str>, status: u16, reason: &str) -> String {
        let mut out = Vec::new();
        respond(&mut out, method, status, reason, "hello\n")
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn head_gets_the_headers_alone_and_405_says_what_is_allowed() {
        let get = response(Some("GET"), 200, "OK").await;
        assert!(get.ends_with("\r\n\r\nhello\n"), "{get}");
        assert!(!get.contains("allow:"), "{get}");
        let head = response(Some("HEAD"), 200, "OK").await;
        assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head}");
        assert!(head.contains("content-length: 6\r\n"), "{head}");
        let bad = response(None, 400, "Bad Request").await;
        assert!(bad.ends_with("hello\n"), "{bad}");
        let post = response(Some("POST"), 405, "Method Not Allowed").await;
        assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");
    }

    #[tokio::test]
    async fn parses_upgrade_head() {
        let req = b"GET /user/a/sshd/ HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\nAuthorization: token abc\r\n\r\n";
        let (mut far, mut near) = tokio::io::duplex(1024);
        far.write_all(&req[4..]).await.unwrap();
        let head = read_head(&mut near, Bytes::from_static(b"GET "))
            .await
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/user/a/sshd/");
        assert!(head.upgrade);
        assert_eq!(head.authorization.as_deref(), Some("token abc"));
        assert_eq!(&head.raw[..], &req[..]);
        assert_eq!(head.len, req.len());
        assert!(head.connection_upgrade);
    }

    #[tokio::test]
    async fn rejects_oversized_and_truncated_heads() {
        let (mut far, mut near) = tokio::io::duplex(64 * 1024);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        far.write_all(big.as_bytes()).await.unwrap();
        assert!(matches!(
            read_head(&mut near, Bytes::new()).await,
            Err(HeadError::TooLarge)
        ));

        let (mut far, mut near) = tokio::io::duplex(1024);
        far.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        drop(far);
        assert!(matches!(
            read_head(&mut near, Bytes::new()).await,
            Err(HeadError::Truncated)
        ));

        let (mut far, mut near) = tokio::io::duplex(1024);
        far.write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            read_head(&mut near, Bytes::new()).await,
            Err(HeadError::Malformed(_))
        ));
    }
}
