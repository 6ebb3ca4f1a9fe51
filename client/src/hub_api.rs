//! The hub's REST API (`/hub/api/...`), reached the way the tunnel is (proxy, TLS, the token):
//! who a token belongs to, whether a server runs, starting it and following its progress.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::connect::{self, ConnectOptions};
use crate::endpoint::Endpoint;
use crate::error::ConnectError;

/// Largest API answer read (a user model is a few KiB).
const MAX_ANSWER: usize = 4 << 20;
/// Time for one API call, connect to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One hub, by its base URL (`https://hub.example.org`, with any path prefix before `/hub/`).
#[derive(Debug, Clone)]
pub struct HubApi {
    /// As a person types it, without a trailing slash.
    pub base: String,
    endpoint: Endpoint,
    opts: ConnectOptions,
}

/// An API answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, or an error that says the hub answered something else (an HTML page
    /// usually means the URL is not the hub's).
    pub fn json(&self, what: &str) -> Result<Value, ConnectError> {
        serde_json::from_slice(&self.body).map_err(|_| {
            let kind = if self.content_type.contains("html") {
                "an HTML page"
            } else {
                "something that is not JSON"
            };
            ConnectError::Setup(format!(
                "the hub answered {what} with {kind} (HTTP {}): check that the URL is the hub's",
                self.status
            ))
        })
    }

    /// The hub's own words in an error answer (its JSON `message`), if it gave any.
    pub fn message(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        let text = body["message"].as_str()?.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

impl HubApi {
    /// `base` is the hub's URL (`https://hub.example.org`); a trailing `/hub/...` is dropped.
    pub fn new(base: &str, opts: ConnectOptions) -> Result<Self, ConnectError> {
        let trimmed = base.trim_end_matches('/');
        let trimmed = match trimmed
            .find("/hub/")
            .or_else(|| trimmed.strip_suffix("/hub").map(str::len))
        {
            Some(i) => &trimmed[..i],
            None => trimmed,
        };
        let endpoint = Endpoint::parse(trimmed).map_err(|e| ConnectError::Setup(e.to_string()))?;
        Ok(HubApi {
            // One spelling per hub, so a login saved as typed is found however a URL names it.
            base: crate::store::normal_base(trimmed),
            endpoint,
            opts,
        })
    }

    /// The same hub reached with `opts` (proxy, TLS, token), which depend on its endpoint.
    pub fn with_options(mut self, opts: ConnectOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The endpoint of the hub itself (its host, port and TLS), for the tunnel's connection.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One call to `/hub/api{path}` with the token; the whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ConnectError> {
        let fut = async {
            let response = self.send(method, path, body).await?;
            let (parts, incoming) = response.into_parts();
            let body = Limited::new(incoming, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.broken(&e.to_string()))?
                .to_bytes();
            Ok(answer(&parts, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| ConnectError::Timeout {
                authority: self.endpoint.authority(),
                secs: CALL_TIMEOUT.as_secs(),
            })?
    }

    /// Follows a server-sent event stream at `/hub/api{path}`, calling `each` with every JSON
    /// event until it returns false or the stream ends. Returns the status if it was not 200.
    pub async fn events(
        &self,
        path: &str,
        mut each: impl FnMut(&Value) -> bool,
    ) -> Result<Option<Answer>, ConnectError> {
        let response = self.send("GET", path, None).await?;
        let (parts, mut incoming) = response.into_parts();
        if parts.status != 200 {
            let body = Limited::new(incoming, MAX_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Ok(Some(answer(&parts, body)));
        }
        let mut pending = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| self.broken(&e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                    if !each(&event) {
                        return Ok(None);
                    }
                }
            }
            if pending.len() > MAX_ANSWER {
                return Err(self.broken("an event longer than 4 MiB"));
            }
        }
        Ok(None)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ConnectError> {
        let transport = connect::transport(&self.endpoint, &self.opts).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(transport))
                .await
                .map_err(|e| self.broken(&e.to_string()))?;
        tokio::spawn(connection);
        let prefix = self.endpoint.url.path().trim_end_matches('/');
        let uri = format!("{prefix}/hub/api{path}");
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header(HOST, self.endpoint.authority())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("hubssh/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.opts.token {
            request = request.header(AUTHORIZATION, connect::authorization(token)?);
        }
        let body = match body {
            Some(v) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| ConnectError::Setup(format!("bad request {method} {uri}: {e}")))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.broken(&e.to_string()))
    }

    fn broken(&self, reason: &str) -> ConnectError {
        ConnectError::Http {
            status: 0,
            reason: format!("the connection broke: {reason}"),
            url: self.base.clone(),
        }
    }
}

fn answer(parts: &hyper::http::response::Parts, body: Bytes) -> Answer {
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    Answer {
        status: parts.status.as_u16(),
        content_type: header(CONTENT_TYPE).unwrap_or_default(),
        location: header(LOCATION),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_drops_the_hub_path() {
        for (input, base) in [
            ("https://hub.example.org", "https://hub.example.org"),
            ("https://hub.example.org/", "https://hub.example.org"),
            (
                "https://hub.example.org/hub/home",
                "https://hub.example.org",
            ),
            (
                "https://hub.example.org/prefix/hub/",
                "https://hub.example.org/prefix",
            ),
            ("http://127.0.0.1:8000/hub", "http://127.0.0.1:8000"),
        ] {
            assert_eq!(
                HubApi::new(input, ConnectOptions::default()).unwrap().base,
                base,
                "{input}"
            );
        }
    }
}
