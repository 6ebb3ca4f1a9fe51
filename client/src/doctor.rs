//! `hubssh doctor NAME|URL`: checks each hop to the server's SSH in order (DNS, TCP or the HTTP
//! proxy, TLS, the token, the server running, the endpoint, the SSH banner) and stops at the
//! first that fails, saying what to do.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::{self, Net};
use crate::connect;
use crate::endpoint::Endpoint;
use crate::error::ConnectError;
use crate::token::Token;

/// How long the SSH server may take to send its banner.
const BANNER_WAIT: Duration = Duration::from_secs(15);

/// How long one network step (DNS, the proxy, TLS) may take before it counts as failed: as
/// long as `hubssh proxy` waits for the whole connection.
const STEP_WAIT: Duration = connect::CONNECT_TIMEOUT;

/// `step`, or a failure when it has not finished within [`STEP_WAIT`] (a host that takes the
/// TCP connection and never answers TLS, a DNS server that does not answer).
async fn within<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_WAIT, step).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", STEP_WAIT.as_secs())),
    }
}

/// Longest identification line read (RFC 4253 4.2 allows 255 bytes).
const MAX_BANNER: usize = 255;

/// The checklist as it is printed.
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, step: &str, detail: &str) {
        println!("  ok    {step:<9} {detail}");
    }

    /// Prints the failure and what to do; the remaining steps are skipped.
    fn fail(&mut self, step: &str, detail: &str, todo: &str) {
        println!("  FAIL  {step:<9} {detail}");
        if !todo.is_empty() {
            println!("        {:<9} -> {todo}", "");
        }
        self.failed = true;
    }
}

/// Runs the checks; `Ok(true)` when all passed.
pub async fn run(url: &str, token: Option<Token>, net: &Net) -> anyhow::Result<bool> {
    let endpoint = Endpoint::parse(url)?;
    let hub = endpoint.hub_url();
    println!("hubssh doctor: {url}");
    let mut report = Report { failed: false };
    let opts = net.options(&endpoint, token.clone())?;

    // 1-2. DNS and TCP, or the proxy (which resolves and connects for us).
    if let Some(proxy) = &opts.proxy {
        let start = Instant::now();
        match within(proxy.connect(&endpoint.host_port())).await {
            Ok(_) => report.ok(
                "proxy",
                &format!(
                    "{} opened a tunnel to {} ({} ms)",
                    proxy.display(),
                    endpoint.host_port(),
                    start.elapsed().as_millis()
                ),
            ),
            Err(e) => {
                report.fail(
                    "proxy",
                    &e.to_string(),
                    "check the proxy settings (--proxy, HTTPS_PROXY, NO_PROXY)",
                );
                return Ok(false);
            }
        }
    } else {
        let addrs = match within(tokio::net::lookup_host((
            endpoint.host.as_str(),
            endpoint.port,
        )))
        .await
        {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                report.fail(
                    "DNS",
                    &format!("cannot resolve {}: {e}", endpoint.host),
                    "check the hub's address and your network or VPN",
                );
                return Ok(false);
            }
        };
        let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        report.ok("DNS", &format!("{} -> {}", endpoint.host, shown.join(", ")));
        let start = Instant::now();
        let mut connected = None;
        let mut last_error = String::from("no addresses");
        for addr in &addrs {
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(_)) => {
                    connected = Some(*addr);
                    break;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "no answer within 10 s".into(),
            }
        }
        match connected {
            Some(addr) => report.ok(
                "TCP",
                &format!("connected to {addr} ({} ms)", start.elapsed().as_millis()),
            ),
            None => {
                report.fail(
                    "TCP",
                    &format!("cannot connect to {}: {last_error}", endpoint.authority()),
                    "check the port in the URL; a firewall may need an HTTP proxy (--proxy)",
                );
                return Ok(false);
            }
        }
    }

    // 3. TLS.
    if endpoint.tls {
        match within(connect::transport(&endpoint, &opts)).await {
            Ok(_) => report.ok("TLS", &format!("certificate valid for {}", endpoint.host)),
            Err(e) => {
                report.fail(
                    "TLS",
                    &e.to_string(),
                    "", // the certificate's problem comes with what to do about it
                );
                return Ok(false);
            }
        }
    }

    // 4. The token.
    let Some(token) = token else {
        report.fail(
            "token",
            "no token",
            &format!("run `hubssh login {hub}`, or set HUBSSH_TOKEN"),
        );
        return Ok(false);
    };
    let api = net.api(&hub, Some(token))?;
    let owner = match commands::whoami(&api).await {
        Ok(name) => {
            report.ok("token", &format!("valid: it belongs to {name}"));
            name
        }
        Err(e) => {
            report.fail(
                "token",
                &format!("{e:#}"),
                &format!("make a new token at {hub}/hub/token and run `hubssh login {hub}`"),
            );
            return Ok(false);
        }
    };

    // 5. The server.
    if let Some((user, server)) = commands::user_and_server(url) {
        let label = if server.is_empty() {
            format!("{user}'s server")
        } else {
            format!("{user}'s server {server:?}")
        };
        let answer = api.call("GET", &commands::users_path(&user), None).await?;
        let model = answer.json("GET /hub/api/users").unwrap_or_default();
        let entry = &model["servers"][&server];
        // A token scoped to the tunnel alone (access:servers) may not read the user model, or
        // gets it without its servers, and still gets in: then the endpoint decides.
        let unseen = answer.status == 200 && model.get("servers").is_none();
        match answer.status {
            200 if unseen => report.ok(
                "server",
                &format!("the token of {owner} may not read {label}'s state; trying the endpoint"),
            ),
            200 if entry["ready"] == true => report.ok("server", &format!("{label} is running")),
            200 if !entry["pending"].is_null() => {
                report.fail(
                    "server",
                    &format!(
                        "{label} is {}",
                        entry["pending"].as_str().unwrap_or("pending")
                    ),
                    "wait for it, or follow it at the hub's home page",
                );
                return Ok(false);
            }
            200 => {
                report.fail(
                    "server",
                    &format!("{label} is not running"),
                    &format!("start it with `hubssh proxy --start` or at {hub}/hub/home"),
                );
                return Ok(false);
            }
            s @ (403 | 404) => report.ok(
                "server",
                &format!("the token of {owner} may not read {label}'s state (HTTP {s}); trying the endpoint"),
            ),
            s => report.ok(
                "server",
                &format!("cannot ask the hub (HTTP {s}); trying the endpoint"),
            ),
        }
    }

    // 6. The endpoint, 7. the SSH banner.
    let mut ws = match connect::connect(&endpoint, &opts).await {
        Ok(ws) => {
            report.ok(
                "endpoint",
                &format!("WebSocket open at {}", endpoint.url.path()),
            );
            ws
        }
        Err(e) => {
            let todo = match &e {
                ConnectError::EndpointMissing { .. } | ConnectError::NotFound { .. } => {
                    "install jupyter-hubssh in the server's image (docs/deploy.md)"
                }
                _ => "",
            };
            report.fail("endpoint", &e.to_string(), todo);
            return Ok(false);
        }
    };
    // Say hello first: some SSH servers (russh) speak only after the client's identification.
    let hello = concat!("SSH-2.0-hubssh_doctor_", env!("CARGO_PKG_VERSION"), "\r\n");
    let banner = tokio::time::timeout(BANNER_WAIT, async {
        ws.write_all(hello.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        ws.flush().await.map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") && line.len() < MAX_BANNER {
            match ws.read(&mut byte).await {
                Ok(0) if line.is_empty() => {
                    return Err("the server closed the tunnel without a word".to_owned())
                }
                Ok(0) => break,
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no SSH banner within {} s", BANNER_WAIT.as_secs())));
    let _ = ws.shutdown().await;
    match banner {
        Ok(text) if text.starts_with("SSH-") => {
            report.ok("ssh", text.lines().next().unwrap_or_default().trim());
        }
        Ok(text) => report.fail(
            "ssh",
            &format!(
                "the endpoint answered {:?}, not an SSH banner",
                text.chars().take(40).collect::<String>()
            ),
            "the path may lead to another service: check the URL",
        ),
        Err(why) => report.fail(
            "ssh",
            &why,
            "look at the server's log (hubsshd logs each connection)",
        ),
    }
    if !report.failed {
        println!("all checks passed");
    }
    Ok(!report.failed)
}
