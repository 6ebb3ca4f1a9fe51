//! The commands around the tunnel: `login`, `logout`, `config add/remove/list`, and starting a
//! stopped server (`--start`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::connect::ConnectOptions;
use crate::endpoint::Endpoint;
use crate::hub_api::HubApi;
use crate::net_proxy;
use crate::ssh_config;
use crate::store::{self, name_in_path, Host, Login, Store};
use crate::tls;
use crate::token::{self, Token};

/// How to reach a hub: TLS and proxy settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct Net {
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    pub proxy: Option<String>,
}

impl Net {
    /// Connection options for `endpoint` with `token`.
    pub fn options(
        &self,
        endpoint: &Endpoint,
        token: Option<Token>,
    ) -> anyhow::Result<ConnectOptions> {
        let tls = if endpoint.tls {
            Some(tls::client_config(self.cacert.as_deref(), self.insecure)?)
        } else {
            None
        };
        let proxy = net_proxy::choose(
            self.proxy.as_deref(),
            |name| std::env::var(name).ok(),
            endpoint.tls,
            &endpoint.host,
            endpoint.port,
        )?;
        Ok(ConnectOptions { token, tls, proxy })
    }

    /// The API of the hub at `hub` (its base URL), called with `token`.
    pub fn api(&self, hub: &str, token: Option<Token>) -> anyhow::Result<HubApi> {
        let api = HubApi::new(hub, ConnectOptions::default())?;
        let opts = self.options(api.endpoint(), token)?;
        Ok(api.with_options(opts))
    }
}

/// Who a token belongs to, asked of the hub (`GET /hub/api/user`).
pub async fn whoami(api: &HubApi) -> anyhow::Result<String> {
    let answer = api.call("GET", "/user", None).await?;
    match answer.status {
        200 => {}
        401 | 403 => anyhow::bail!(
            "{} refused the token (HTTP {}): it is wrong, expired or revoked. Make one at {}/hub/token",
            api.base,
            answer.status,
            api.base
        ),
        _ => {}
    }
    // An HTML page (not a hub, or a login portal in front of it) is explained by `json`.
    let model = answer.json("GET /hub/api/user")?;
    if answer.status != 200 {
        anyhow::bail!(
            "{} answered HTTP {} to GET /hub/api/user",
            api.base,
            answer.status
        );
    }
    if model["kind"] == "service" {
        anyhow::bail!(
            "this token belongs to the service {}, not a user",
            model["name"]
        );
    }
    model["name"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the hub's answer to GET /hub/api/user has no user name"))
}

/// Reads a token: from `file`; else a prompt without echo when stdin is a terminal; else the
/// first line of stdin.
pub fn read_token(file: Option<&Path>, hub: &str) -> anyhow::Result<Token> {
    if let Some(file) = file {
        return Ok(token::read_file(file)?);
    }
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!(
            "API token for {hub} (make one at {hub}/hub/token; input is hidden): "
        ))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    let line = line.trim();
    anyhow::ensure!(!line.is_empty(), "no token given");
    Ok(Token::new(line))
}

/// `hubssh login HUB`: checks the token with the hub and remembers hub, user and token.
pub async fn login(hub: &str, token: Token, net: &Net) -> anyhow::Result<()> {
    let api = net.api(hub, Some(token.clone()))?;
    let user = whoami(&api).await?;
    let path = store::path()?;
    let mut store = Store::load(&path)?;
    store.set_login(Login::new(api.base.clone(), user.clone(), &token));
    store.save(&path)?;
    eprintln!(
        "hubssh: logged in to {} as {user} (token kept in {}, readable by you only)",
        api.base,
        path.display()
    );
    Ok(())
}

/// `hubssh logout HUB`: forgets the hub's token.
pub fn logout(hub: &str) -> anyhow::Result<()> {
    let base = HubApi::new(hub, ConnectOptions::default())?.base;
    let path = store::path()?;
    let mut store = Store::load(&path)?;
    let before = store.hubs.len();
    store.hubs.retain(|l| store::normal_base(&l.hub) != base);
    if store.hubs.len() == before {
        eprintln!("hubssh: not logged in to {base}");
        return Ok(());
    }
    store.save(&path)?;
    eprintln!("hubssh: logged out of {base}");
    Ok(())
}

/// What `config add` is told.
#[derive(Debug, Clone)]
pub struct AddHost {
    pub name: String,
    pub hub: String,
    pub user: Option<String>,
    pub server: String,
    pub start: bool,
}

/// The ssh config file to manage: `--ssh-config`, else `~/.ssh/config`.
pub fn ssh_config_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_owned()),
        None => Ok(dirs::home_dir()
            .ok_or_else(|| anyhow::anyhow!("no home directory: pass --ssh-config FILE"))?
            .join(".ssh")
            .join("config")),
    }
}

/// `hubssh config add`: remembers the host and rewrites the managed block.
pub fn config_add(add: AddHost, ssh_config: &Path, dry_run: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        ssh_config::valid_name(&add.name),
        "{:?} cannot be a host name: use letters, digits, '.', '-' and '_'",
        add.name
    );
    let base = HubApi::new(&add.hub, ConnectOptions::default())?.base;
    let path = store::path()?;
    let mut store = Store::load(&path)?;
    let user = match (add.user, store.login(&base)) {
        (Some(u), _) => u,
        (None, Some(login)) => login.user.clone(),
        (None, None) => anyhow::bail!(
            "not logged in to {base}: run `hubssh login {base}` first (or pass --user)"
        ),
    };
    let host = Host {
        hub: base,
        user,
        server: add.server,
        start: add.start,
    };
    let stored_change = store.hosts.get(&add.name) != Some(&host);
    store.hosts.insert(add.name.clone(), host);
    let written = write_block(&store, ssh_config, dry_run)?;
    if !dry_run && stored_change {
        store.save(&path)?;
    }
    report(
        written,
        stored_change,
        dry_run,
        &format!("Host {}", add.name),
        ssh_config,
    );
    Ok(())
}

/// `hubssh config remove NAME`.
pub fn config_remove(name: &str, ssh_config: &Path, dry_run: bool) -> anyhow::Result<()> {
    let path = store::path()?;
    let mut store = Store::load(&path)?;
    let known = store.hosts.remove(name).is_some();
    let written = write_block(&store, ssh_config, dry_run)?;
    if !known && !written {
        anyhow::bail!("no host {name:?} in hubssh's config (see `hubssh config list`)");
    }
    if known && !dry_run {
        store.save(&path)?;
    }
    report(
        written,
        known,
        dry_run,
        &format!("removed Host {name}"),
        ssh_config,
    );
    Ok(())
}

/// `hubssh config list`: one line per host.
pub fn config_list() -> anyhow::Result<()> {
    let store = Store::load(&store::path()?)?;
    if store.hosts.is_empty() {
        eprintln!("hubssh: no hosts yet: add one with `hubssh config add NAME --hub URL`");
    }
    for (name, host) in &store.hosts {
        let start = if host.start { "  (--start)" } else { "" };
        println!("{name}\t{}{start}", host.url());
    }
    Ok(())
}

/// The hubssh the ProxyCommand names: the `hubssh` on `path` when that is this very program,
/// so a package manager's stable name (`/opt/homebrew/bin/hubssh`, `~/.nix-profile/bin/hubssh`)
/// is written rather than the versioned file it points to, which an upgrade removes; else this
/// program's own path, as the system gives it (never a Windows `\\?\` path).
fn proxy_exe(path: Option<std::ffi::OsString>) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let Ok(me) = exe.canonicalize() else {
        return Ok(exe);
    };
    let name = if cfg!(windows) {
        "hubssh.exe"
    } else {
        "hubssh"
    };
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.is_absolute() && dir.join(name).canonicalize().is_ok_and(|p| p == me));
    Ok(on_path.map_or(exe, |dir| dir.join(name)))
}

/// Renders the block into `ssh_config`; true if the file changed (or would, with `dry_run`).
fn write_block(store: &Store, ssh_config: &Path, dry_run: bool) -> anyhow::Result<bool> {
    let exe = proxy_exe(std::env::var_os("PATH"))?;
    let block = ssh_config::render(&store.hosts, &exe.to_string_lossy());
    let text = match std::fs::read_to_string(ssh_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", ssh_config.display()),
    };
    let old =
        ssh_config::current(&text).map_err(|e| anyhow::anyhow!("{}: {e}", ssh_config.display()))?;
    if old == block {
        return Ok(false);
    }
    if dry_run {
        println!(
            "--- {}\n+++ {} (after)",
            ssh_config.display(),
            ssh_config.display()
        );
        print!("{}", ssh_config::diff(old, &block));
        return Ok(true);
    }
    let new = ssh_config::splice(&text, &block)?;
    // ~/.ssh is 0700 when ssh makes it; a new config file is the owner's only.
    let private = !ssh_config.exists();
    // A config that is a link (dotfile managers make them) is written where it points: replacing
    // the link itself would cut it off from its repository.
    let target = std::fs::canonicalize(ssh_config).unwrap_or_else(|_| ssh_config.to_owned());
    store::write_atomic(&target, new.as_bytes(), private)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.display()))?;
    Ok(true)
}

fn report(written: bool, stored: bool, dry_run: bool, what: &str, file: &Path) {
    match (written || stored, dry_run) {
        (false, _) => eprintln!(
            "hubssh: no changes ({what} is already in {})",
            file.display()
        ),
        (true, true) => eprintln!("hubssh: dry run: nothing written"),
        (true, false) => eprintln!("hubssh: {what} in {}", file.display()),
    }
}

/// The user and server a tunnel URL names (`.../user/NAME/[SERVER/]sshd/`).
pub fn user_and_server(url: &str) -> Option<(String, String)> {
    let path = url.split_once("/user/")?.1;
    let parts: Vec<&str> = path.split('/').collect();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    match parts.as_slice() {
        [user, "sshd", ..] => Some((decode(user), String::new())),
        [user, server, "sshd", ..] => Some((decode(user), decode(server))),
        _ => None,
    }
}

/// The hub API path of `user`'s model, the name escaped for a path.
pub fn users_path(user: &str) -> String {
    format!("/users/{}", name_in_path(user))
}

/// How long a start may take before hubssh gives up.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Starts `user`'s server `server` (empty: the default one) and waits until the hub says it
/// is ready, showing the hub's progress on stderr.
pub async fn start_server(api: &HubApi, user: &str, server: &str) -> anyhow::Result<()> {
    let base = if server.is_empty() {
        format!("{}/server", users_path(user))
    } else {
        format!("{}/servers/{}", users_path(user), name_in_path(server))
    };
    let label = if server.is_empty() {
        format!("{user}'s server")
    } else {
        format!("{user}'s server {server:?}")
    };
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut stopping = false;
    loop {
        let answer = api.call("POST", &base, None).await?;
        let why = answer.message().unwrap_or_default();
        match answer.status {
            201 => {
                eprintln!("hubssh: {label} started");
                return Ok(());
            }
            202 => break, // starting: the progress stream tells how it goes
            // It came up between the tunnel's refusal and this request.
            400 if why.contains("already running") => return Ok(()),
            // Still stopping (a stop just asked for, or a server being culled): start it once
            // it has stopped, as a person would by trying again.
            400 if why.contains("pending stop") => {
                if !stopping {
                    eprintln!("hubssh: {label} is stopping; it will be started once it has stopped");
                    stopping = true;
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("{label} did not stop within {} s", START_TIMEOUT.as_secs());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            401 | 403 | 404 => anyhow::bail!(
                "cannot start {label}: the hub refused (HTTP {}): the token may not start servers (scope servers or start:servers)",
                answer.status
            ),
            // The hub's reason: named servers not enabled, the named-server limit, a name the
            // hub does not accept, a start it refuses.
            s if why.is_empty() => anyhow::bail!("cannot start {label}: HTTP {s}"),
            s => anyhow::bail!("cannot start {label}: the hub says (HTTP {s}): {why}"),
        }
    }
    let progress = Progress::new(&label);
    let mut outcome: Option<Result<(), String>> = None;
    let progress_path = format!("{base}/progress");
    let follow = api.events(&progress_path, |event| {
        let message = event["message"].as_str().unwrap_or_default();
        progress.show(event["progress"].as_u64(), message);
        if event["ready"] == Value::Bool(true) {
            outcome = Some(Ok(()));
            return false;
        }
        if event["failed"] == Value::Bool(true) {
            outcome = Some(Err(message.to_owned()));
            return false;
        }
        true
    });
    let refused = tokio::time::timeout_at(deadline, follow)
        .await
        .map_err(|_| {
            anyhow::anyhow!("{label} did not start within {} s", START_TIMEOUT.as_secs())
        })??;
    progress.done();
    if let Some(answer) = refused {
        anyhow::bail!("cannot follow {label}'s start: HTTP {}", answer.status);
    }
    match outcome {
        Some(Ok(())) => {
            eprintln!("hubssh: {label} is ready");
            Ok(())
        }
        Some(Err(message)) => anyhow::bail!("{label} failed to start: {message}"),
        // The stream ended without a verdict: the spawn ended before the stream was opened.
        None => Ok(()),
    }
}

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    label: String,
}

impl Progress {
    fn new(label: &str) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            label: label.to_owned(),
        }
    }

    fn show(&self, percent: Option<u64>, message: &str) {
        let pct = percent.map(|p| format!("{p:>3}% ")).unwrap_or_default();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(
                err,
                "\r\x1b[2Khubssh: starting {}: {pct}{message}",
                self.label
            );
        } else {
            let _ = writeln!(err, "hubssh: starting {}: {pct}{message}", self.label);
        }
        let _ = err.flush();
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        let us = |u: &str| user_and_server(u);
        assert_eq!(
            us("https://h/user/alice/sshd/"),
            Some(("alice".into(), String::new()))
        );
        assert_eq!(
            us("wss://h/p/user/a%40b/gpu/sshd/"),
            Some(("a@b".into(), "gpu".into()))
        );
        assert_eq!(us("https://h/sshd/"), None);
    }
}
