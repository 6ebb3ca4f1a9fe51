//! The hub API token: where it comes from, and a type that never prints it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret that prints as `Token(***)` in logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// The secret itself, for the Authorization header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {} is empty", .0.display())]
    Empty(PathBuf),
}

/// Environment variables that may hold the token, in the order they are tried.
pub const TOKEN_ENV: [&str; 2] = ["HUBSSH_TOKEN", "JUPYTERHUB_API_TOKEN"];

/// The hub's own token variable: JupyterHub sets it in every single-user server, service and
/// job it starts, for that hub only.
const HUB_TOKEN_ENV: &str = "JUPYTERHUB_API_TOKEN";

/// What JupyterHub sets beside [`HUB_TOKEN_ENV`], naming the hub the token is for.
const HUB_OF_TOKEN_ENV: [&str; 3] = [
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_PUBLIC_HUB_URL",
    "JUPYTERHUB_PUBLIC_URL",
];

/// Finds the token for the tunnel at `url`: `token_file` first, then the environment. `None`
/// when there is none. `JUPYTERHUB_API_TOKEN` counts only for its own hub: where JupyterHub
/// also says which hub that is (as it does in every server it starts), `url` must be on it, so
/// a terminal in one hub never hands its token to another.
pub fn load(
    token_file: Option<&Path>,
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Token>, TokenError> {
    if let Some(path) = token_file {
        return read_file(path).map(Some);
    }
    Ok(TOKEN_ENV
        .iter()
        .filter(|name| **name != HUB_TOKEN_ENV || foreign_hub(url, &env).is_none())
        .filter_map(|name| env(name))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .map(Token))
}

/// When `JUPYTERHUB_API_TOKEN` is set for a hub other than the one `url` is on: that hub's
/// address, as JupyterHub gave it.
pub fn foreign_hub(url: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    env(HUB_TOKEN_ENV).filter(|t| !t.trim().is_empty())?;
    let hubs: Vec<String> = HUB_OF_TOKEN_ENV
        .iter()
        .filter_map(|name| env(name))
        .filter(|v| !v.trim().is_empty())
        .collect();
    let target = origin(url);
    if hubs.is_empty() || hubs.iter().any(|h| target.is_some() && origin(h) == target) {
        None
    } else {
        hubs.into_iter().next()
    }
}

/// Scheme (`http` for `ws` too), host and port of `url`.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let url = url::Url::parse(url.trim()).ok()?;
    let scheme = match url.scheme() {
        "https" | "wss" => "https",
        "http" | "ws" => "http",
        _ => return None,
    };
    let port = url.port_or_known_default()?;
    Some((
        scheme.to_owned(),
        url.host_str()?.to_ascii_lowercase(),
        port,
    ))
}

/// Reads a token file: the first non-empty line, trimmed.
pub fn read_file(path: &Path) -> Result<Token, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| Token(l.to_owned()))
        .ok_or_else(|| TokenError::Empty(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_secret() {
        assert_eq!(format!("{:?}", Token::new("s3cret")), "Token(***)");
    }

    #[test]
    fn order_is_file_then_env() {
        let dir = std::env::temp_dir().join(format!("hubssh-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t");
        std::fs::write(&file, "\n  from-file \n").unwrap();
        let env = |name: &str| match name {
            "HUBSSH_TOKEN" => Some(" ".into()),
            "JUPYTERHUB_API_TOKEN" => Some("from-env".into()),
            _ => None,
        };
        let url = "wss://hub.example.org/user/a/sshd/";
        assert_eq!(
            load(Some(&file), url, env).unwrap().unwrap().expose(),
            "from-file"
        );
        assert_eq!(load(None, url, env).unwrap().unwrap().expose(), "from-env");
        assert!(load(None, url, |_| None).unwrap().is_none());
        std::fs::write(&file, "\n\n").unwrap();
        assert!(matches!(
            load(Some(&file), url, env),
            Err(TokenError::Empty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_hubs_own_token_goes_to_that_hub_only() {
        let inside = |hub: &'static str| {
            move |name: &str| match name {
                "JUPYTERHUB_API_TOKEN" => Some("hub-a".to_owned()),
                "JUPYTERHUB_API_URL" => Some("http://127.0.0.1:8081/hub/api".to_owned()),
                "JUPYTERHUB_PUBLIC_HUB_URL" => Some(hub.to_owned()),
                _ => None,
            }
        };
        let a = inside("https://Hub-A.example.org:443/hub/");
        for same in [
            "wss://hub-a.example.org/user/x/sshd/",
            "https://hub-a.example.org/user/x/sshd/",
            "ws://127.0.0.1:8081/user/x/sshd/",
        ] {
            assert_eq!(load(None, same, a).unwrap().unwrap().expose(), "hub-a");
            assert_eq!(foreign_hub(same, a), None);
        }
        let other = "wss://hub-b.example.org/user/x/sshd/";
        assert!(load(None, other, a).unwrap().is_none());
        assert_eq!(
            foreign_hub(other, a).as_deref(),
            Some("http://127.0.0.1:8081/hub/api")
        );
        // HUBSSH_TOKEN is the user's own choice: it goes wherever they point it.
        let chosen = |name: &str| match name {
            "HUBSSH_TOKEN" => Some("mine".to_owned()),
            n => a(n),
        };
        assert_eq!(load(None, other, chosen).unwrap().unwrap().expose(), "mine");
        // Set by hand, with no hub named beside it: the user means it for this URL.
        let by_hand = |name: &str| (name == "JUPYTERHUB_API_TOKEN").then(|| "t".to_owned());
        assert_eq!(load(None, other, by_hand).unwrap().unwrap().expose(), "t");
    }
}
