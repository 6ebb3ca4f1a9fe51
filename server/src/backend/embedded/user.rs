//! Who sessions run as: the user hubsshd runs as, with the home, shell and environment a login
//! on this machine would have.

use std::ffi::OsString;
use std::path::PathBuf;

/// The account sessions run as.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
    /// Login shell: the passwd entry's, else `$SHELL`, else `/bin/sh`.
    pub shell: PathBuf,
}

/// PATH for sessions when hubsshd itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

impl UserInfo {
    /// The effective user of this process.
    pub fn current() -> std::io::Result<UserInfo> {
        let uid = nix::unistd::geteuid();
        let entry = nix::unistd::User::from_uid(uid)
            .map_err(std::io::Error::from)?
            .ok_or_else(|| std::io::Error::other(format!("no passwd entry for uid {uid}")))?;
        let shell = Some(entry.shell)
            .filter(|s| s.is_file())
            .or_else(|| {
                std::env::var_os("SHELL")
                    .map(PathBuf::from)
                    .filter(|s| s.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        let home = std::env::var_os("HOME")
            .filter(|_| entry.dir.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or(entry.dir);
        Ok(UserInfo {
            name: entry.name,
            uid: uid.as_raw(),
            home,
            shell,
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The environment every session starts from: hubsshd's own (as a Jupyter terminal would
    /// have it) without hubsshd's settings, plus the login variables.
    pub fn base_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !crate::allocator::is_own_setting(k))
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                !k.starts_with("HUBSSHD_")
                    && !matches!(k.as_ref(), "TERM" | "SSH_AUTH_SOCK" | "SSH_TTY")
            })
            .collect();
        let mut set = |k: &str, v: OsString| {
            env.retain(|(key, _)| key != k);
            env.push((k.into(), v));
        };
        set("HOME", self.home.clone().into());
        set("USER", self.name.clone().into());
        set("LOGNAME", self.name.clone().into());
        set("SHELL", self.shell.clone().into());
        if std::env::var_os("PATH").is_none() {
            set("PATH", DEFAULT_PATH.into());
        }
        env
    }
}

/// Client `env` requests we honour, like OpenSSH's usual `AcceptEnv LANG LC_*`.
pub fn accept_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "COLORTERM"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_user_has_a_home_and_a_shell() {
        let u = UserInfo::current().unwrap();
        assert!(!u.name.is_empty());
        assert!(u.shell.is_file());
        let env = u.base_env();
        assert!(env.iter().any(|(k, v)| k == "USER" && v == u.name.as_str()));
        assert!(env.iter().all(|(k, _)| k != "TERM"));
    }

    #[test]
    fn env_allow_list() {
        for (name, ok) in [
            ("LANG", true),
            ("LC_ALL", true),
            ("COLORTERM", true),
            ("PATH", false),
            ("LD_PRELOAD", false),
        ] {
            assert_eq!(accept_env(name), ok, "{name}");
        }
    }
}
