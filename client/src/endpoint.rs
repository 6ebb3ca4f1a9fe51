//! Where to connect: the tunnel URL given on the command line, normalised to `ws://`/`wss://`.

use url::Url;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?} is not a URL: give one like https://hub.example.org/user/NAME/sshd/")]
    Parse(String),
    #[error("unsupported scheme {0:?}: use https://, wss://, http:// or ws://")]
    Scheme(String),
    #[error("{0:?} has no host name")]
    NoHost(String),
}

/// A parsed tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The WebSocket URL (`ws://` or `wss://`).
    pub url: Url,
    /// Host name as written (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// Parses `https://`, `wss://`, `http://` or `ws://` URLs; `http(s)` means the same as `ws(s)`.
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        let mut url = Url::parse(input).map_err(|_| EndpointError::Parse(input.to_owned()))?;
        let (scheme, tls) = match url.scheme() {
            "https" | "wss" => ("wss", true),
            "http" | "ws" => ("ws", false),
            other => return Err(EndpointError::Scheme(other.to_owned())),
        };
        url.set_scheme(scheme)
            .map_err(|_| EndpointError::Scheme(url.scheme().to_owned()))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(EndpointError::NoHost(input.to_owned())),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            url,
            host,
            port,
            tls,
        })
    }

    /// The hub's base URL as a person would type it (`https://hub/prefix`), for messages: the
    /// part before `/user/`, or the origin.
    pub fn hub_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let mut base = format!("{scheme}://{}", self.authority());
        if let Some(i) = self.url.path().find("/user/") {
            base.push_str(&self.url.path()[..i]);
        }
        base
    }

    /// `host:port` as it goes in a Host header or a CONNECT line.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// `host:port` with the port always written, as a CONNECT request names it.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True for localhost and loopback addresses.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let cases = [
            (
                "https://hub.example.org/user/alice/sshd/",
                "wss://hub.example.org/user/alice/sshd/",
                443,
                true,
                "https://hub.example.org",
            ),
            (
                "wss://hub:8443/x/user/a/sshd/",
                "wss://hub:8443/x/user/a/sshd/",
                8443,
                true,
                "https://hub:8443/x",
            ),
            (
                "http://127.0.0.1:8000/user/a/sshd/",
                "ws://127.0.0.1:8000/user/a/sshd/",
                8000,
                false,
                "http://127.0.0.1:8000",
            ),
            (
                "ws://[::1]:9/sshd/",
                "ws://[::1]:9/sshd/",
                9,
                false,
                "http://[::1]:9",
            ),
        ];
        for (input, url, port, tls, hub) in cases {
            let e = Endpoint::parse(input).unwrap();
            assert_eq!(e.url.as_str(), url, "{input}");
            assert_eq!((e.port, e.tls), (port, tls), "{input}");
            assert_eq!(e.hub_url(), hub, "{input}");
        }
        assert!(Endpoint::parse("ws://[::1]:9/").unwrap().is_loopback());
        assert!(!Endpoint::parse("https://hub/").unwrap().is_loopback());
    }

    #[test]
    fn rejects_what_is_not_a_tunnel_url() {
        assert!(matches!(
            Endpoint::parse("hub.example.org"),
            Err(EndpointError::Parse(_))
        ));
        assert!(matches!(
            Endpoint::parse("ftp://hub/"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("unix:/tmp/x"),
            Err(EndpointError::Scheme(_))
        ));
    }
}
