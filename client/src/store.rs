//! What hubssh remembers between runs, in one JSON file only its owner can read
//! (`<config dir>/hubssh/hubssh.json`, 0600, written atomically): the hubs logged in to (URL,
//! user, token) and the hosts `hubssh config add` made (name -> hub, user, server).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::token::Token;

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    #[serde(default)]
    pub hubs: Vec<Login>,
    #[serde(default)]
    pub hosts: BTreeMap<String, Host>,
}

/// A hub logged in to.
#[derive(Serialize, Deserialize, Clone)]
pub struct Login {
    /// The hub's base URL (`https://hub.example.org`).
    pub hub: String,
    pub user: String,
    token: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({} as {}, token ***)", self.hub, self.user)
    }
}

impl Login {
    pub fn new(hub: String, user: String, token: &Token) -> Self {
        Login {
            hub,
            user,
            token: token.expose().to_owned(),
        }
    }

    pub fn token(&self) -> Token {
        Token::new(self.token.clone())
    }
}

/// A named host (`hubssh config add NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub hub: String,
    pub user: String,
    /// The named server, empty for the user's default server.
    #[serde(default)]
    pub server: String,
    /// Start the server when it is not running.
    #[serde(default)]
    pub start: bool,
}

impl Host {
    /// The tunnel URL: `HUB/user/USER/[SERVER/]sshd/`.
    pub fn url(&self) -> String {
        tunnel_url(&self.hub, &self.user, &self.server)
    }
}

/// A hub's base URL as one spelling: host in lower case, no default port, no trailing slash
/// (`https://Hub.Example.org:443/` is `https://hub.example.org`). Anything that is not a URL is
/// only trimmed.
pub fn normal_base(base: &str) -> String {
    let base = base.trim();
    match url::Url::parse(base) {
        Ok(url) if url.has_host() => url.as_str().trim_end_matches('/').to_owned(),
        _ => base.trim_end_matches('/').to_owned(),
    }
}

/// What JupyterHub leaves unescaped in a user or server name in its URLs (`quote(name,
/// safe='@~')`, which also keeps `-._`). The hub's proxy forwards the path as it is, and the
/// single-user server matches it byte for byte: `alice%40example.org` is not `alice@example.org`.
pub const NAME_IN_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// A user or server name as JupyterHub writes it in a URL path.
pub fn name_in_path(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, NAME_IN_PATH).to_string()
}

/// `HUB/user/USER/[SERVER/]sshd/`, names escaped as JupyterHub escapes them.
pub fn tunnel_url(hub: &str, user: &str, server: &str) -> String {
    let server = if server.is_empty() {
        String::new()
    } else {
        format!("{}/", name_in_path(server))
    };
    format!(
        "{}/user/{}/{server}sshd/",
        hub.trim_end_matches('/'),
        name_in_path(user)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot find a config directory for hubssh: set HUBSSH_CONFIG_DIR")]
    NoDir,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not hubssh's JSON ({source}): fix or remove it", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file: `$HUBSSH_CONFIG_DIR/hubssh.json`, else `<config dir>/hubssh/hubssh.json`.
pub fn path() -> Result<PathBuf, StoreError> {
    if let Some(dir) = std::env::var_os("HUBSSH_CONFIG_DIR") {
        return Ok(PathBuf::from(dir).join("hubssh.json"));
    }
    Ok(dirs::config_dir()
        .ok_or(StoreError::NoDir)?
        .join("hubssh")
        .join("hubssh.json"))
}

impl Store {
    /// Reads the store at `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Store, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(source) => Err(StoreError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the store to `path` atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(self).expect("the store serialises") + "\n";
        write_atomic(path, text.as_bytes(), true).map_err(|source| StoreError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The login for `hub` (base URLs compared as [`normal_base`] writes them).
    pub fn login(&self, hub: &str) -> Option<&Login> {
        let hub = normal_base(hub);
        self.hubs.iter().find(|l| normal_base(&l.hub) == hub)
    }

    /// The login whose hub the tunnel `url` belongs to (the longest matching base).
    pub fn login_for_url(&self, url: &str) -> Option<&Login> {
        let url = normal_base(
            &url.replacen("wss://", "https://", 1)
                .replacen("ws://", "http://", 1),
        );
        self.hubs
            .iter()
            .map(|l| (l, normal_base(&l.hub)))
            .filter(|(_, hub)| url.starts_with(&format!("{hub}/")))
            .max_by_key(|(_, hub)| hub.len())
            .map(|(l, _)| l)
    }

    /// Adds or replaces the login for `login.hub`.
    pub fn set_login(&mut self, login: Login) {
        let hub = normal_base(&login.hub);
        self.hubs.retain(|l| normal_base(&l.hub) != hub);
        self.hubs.push(login);
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old file or the new one, never half of one. `private`: 0600 and a 0700
/// directory if it has to be made. An existing file's permissions are kept otherwise.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(if private { 0o700 } else { 0o755 });
        }
        builder.create(dir)?;
    }
    // Elsewhere the file inherits the per-user directory's access control (%APPDATA% on Windows).
    #[cfg(not(unix))]
    let _ = private;
    let mut tmp = tempfile::Builder::new()
        .prefix(".hubssh-")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = match std::fs::metadata(path) {
            Ok(m) if !private => m.permissions().mode() & 0o7777,
            _ if private => 0o600,
            _ => 0o644,
        };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_urls() {
        assert_eq!(
            tunnel_url("https://hub.example.org/", "alice", ""),
            "https://hub.example.org/user/alice/sshd/"
        );
        assert_eq!(
            tunnel_url("https://h/prefix", "a.b-c_d", "gpu 1"),
            "https://h/prefix/user/a.b-c_d/gpu%201/sshd/"
        );
        // As JupyterHub spells them (OAuth hubs often name users by email address).
        assert_eq!(
            tunnel_url("https://h", "alice@example.org", "~x#?%/"),
            "https://h/user/alice@example.org/~x%23%3F%25%2F/sshd/"
        );
    }

    #[test]
    fn saves_privately_and_finds_logins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("hubssh.json");
        let mut store = Store::default();
        store.set_login(Login::new(
            "https://hub".into(),
            "alice".into(),
            &Token::new("t1"),
        ));
        store.set_login(Login::new(
            "https://hub/other".into(),
            "bob".into(),
            &Token::new("t2"),
        ));
        store.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Store::load(&path).unwrap();
        assert_eq!(back.login("https://hub/").unwrap().user, "alice");
        let by_url = |u: &str| back.login_for_url(u).map(|l| l.user.clone());
        assert_eq!(
            by_url("wss://hub/user/alice/sshd/").as_deref(),
            Some("alice")
        );
        assert_eq!(
            by_url("https://hub/other/user/bob/sshd/").as_deref(),
            Some("bob")
        );
        assert_eq!(by_url("https://hubx/user/a/sshd/"), None);
        // However the hub was spelt when logging in: a URL's host is case-blind, and 443 is
        // https's own port.
        let mut typed = Store::default();
        typed.set_login(Login::new(
            "https://Hub.Example.org:443/".into(),
            "carol".into(),
            &Token::new("t3"),
        ));
        let carol = typed.login_for_url("wss://hub.example.org/user/carol/sshd/");
        assert_eq!(carol.map(|l| l.user.as_str()), Some("carol"));
        assert!(typed.login("https://hub.example.org").is_some());
        typed.set_login(Login::new(
            "https://HUB.example.org".into(),
            "carol".into(),
            &Token::new("t4"),
        ));
        assert_eq!(typed.hubs.len(), 1, "one login per hub");
        assert!(!format!("{:?}", back.hubs).contains("t1"));
        assert!(Store::load(&dir.path().join("missing.json"))
            .unwrap()
            .hosts
            .is_empty());
    }
}
