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

/// Finds the token: `token_file` first, then the environment. `None` when there is none.
pub fn load(
    token_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Token>, TokenError> {
    if let Some(path) = token_file {
        return read_file(path).map(Some);
    }
    Ok(TOKEN_ENV
        .iter()
        .filter_map(|name| env(name))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .map(Token))
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
        assert_eq!(
            load(Some(&file), env).unwrap().unwrap().expose(),
            "from-file"
        );
        assert_eq!(load(None, env).unwrap().unwrap().expose(), "from-env");
        assert!(load(None, |_| None).unwrap().is_none());
        std::fs::write(&file, "\n\n").unwrap();
        assert!(matches!(load(Some(&file), env), Err(TokenError::Empty(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
