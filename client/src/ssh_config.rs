//! The managed block hubssh keeps in an ssh config file: one `Host` entry per configured name,
//! between two marker lines. Everything outside the markers is left byte for byte as it was; a
//! file with broken markers is an error, never a guess.

use std::collections::BTreeMap;

use crate::store::Host;

pub const START: &str = "# ------------ START HUBSSH MANAGED BLOCK ------------";
pub const END: &str = "# ------------ END HUBSSH MANAGED BLOCK ------------";
const NOTE: &str =
    "# Written by `hubssh config`; change it with `hubssh config add/remove`, not by hand.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("the ssh config has a hubssh start marker without an end marker (line {0}): fix the file by hand")]
    Unclosed(usize),
    #[error("the ssh config has a hubssh end marker without a start marker (line {0}): fix the file by hand")]
    Unopened(usize),
    #[error("the ssh config has more than one hubssh block (line {0}): fix the file by hand")]
    Twice(usize),
}

/// Where the block is: byte offsets of its first and past-its-last byte (end-of-line included).
fn find(text: &str) -> Result<Option<(usize, usize)>, BlockError> {
    let (mut start, mut block) = (None, None);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']).trim();
        if bare == START {
            if start.is_some() {
                return Err(BlockError::Unclosed(i + 1));
            }
            if block.is_some() {
                return Err(BlockError::Twice(i + 1));
            }
            start = Some(offset);
        } else if bare == END {
            match start.take() {
                Some(s) => block = Some((s, offset + line.len())),
                None => return Err(BlockError::Unopened(i + 1)),
            }
        }
        offset += line.len();
    }
    if let Some(s) = start {
        let line = text[..s].matches('\n').count() + 1;
        return Err(BlockError::Unclosed(line));
    }
    Ok(block)
}

/// The current block's text (empty when there is none).
pub fn current(text: &str) -> Result<&str, BlockError> {
    Ok(find(text)?.map_or("", |(s, e)| &text[s..e]))
}

/// Where a new block goes: before the file's first `Host` or `Match` section (and the comment
/// lines right above it). ssh takes the first value it finds for an option, so a block after
/// a `Host *` would lose its `User` and `ProxyCommand` to it. `None`: the file has no sections.
fn before_first_section(text: &str) -> Option<usize> {
    let (mut offset, mut comments_from) = (0, None);
    for line in text.split_inclusive('\n') {
        let bare = line.trim();
        let word = bare
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .unwrap_or_default();
        if word.eq_ignore_ascii_case("host") || word.eq_ignore_ascii_case("match") {
            return Some(comments_from.unwrap_or(offset));
        }
        if bare.starts_with('#') {
            comments_from.get_or_insert(offset);
        } else {
            comments_from = None;
        }
        offset += line.len();
    }
    None
}

/// `text` with its block replaced by `block`; with none yet, it goes before the first section
/// (or at the end of a file without one). An empty `block` removes it, and the blank line
/// that set it off.
pub fn splice(text: &str, block: &str) -> Result<String, BlockError> {
    Ok(match find(text)? {
        Some((s, e)) if block.is_empty() => {
            let rest = &text[e..];
            let rest = rest
                .strip_prefix("\r\n")
                .or_else(|| rest.strip_prefix('\n'))
                .unwrap_or(rest);
            format!("{}{rest}", &text[..s])
        }
        Some((s, e)) => format!("{}{block}{}", &text[..s], &text[e..]),
        None if block.is_empty() => text.to_owned(),
        None => match before_first_section(text) {
            Some(at) => format!("{}{block}\n{}", &text[..at], &text[at..]),
            None => {
                let sep = if text.is_empty() || text.ends_with("\n\n") {
                    ""
                } else if text.ends_with('\n') {
                    "\n"
                } else {
                    "\n\n"
                };
                format!("{text}{sep}{block}")
            }
        },
    })
}

/// The block for `hosts`, each reached with `exe proxy NAME`; empty when there are no hosts.
pub fn render(hosts: &BTreeMap<String, Host>, exe: &str) -> String {
    if hosts.is_empty() {
        return String::new();
    }
    let mut out = format!("{START}\n{NOTE}\n");
    for (name, host) in hosts {
        out.push_str(&format!(
            "Host {name}\n  User {user}\n  ProxyCommand {exe} proxy {name}\n  HostKeyAlias {alias}\n  ServerAliveInterval 30\n  ServerAliveCountMax 4\n",
            user = host.user,
            exe = quote_command(exe),
            alias = host_key_alias(host),
        ));
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// A name for known_hosts, unique per hub, user and server:
/// `hubssh.<hub host>[.<port>][.<prefix>].<user>[.<server>]`.
pub fn host_key_alias(host: &Host) -> String {
    let hub = host
        .hub
        .split_once("://")
        .map_or(host.hub.as_str(), |(_, rest)| rest);
    let mut parts = vec!["hubssh".to_owned()];
    parts.extend(
        hub.split(['/', ':'])
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
    );
    parts.push(host.user.clone());
    if !host.server.is_empty() {
        parts.push(host.server.clone());
    }
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The program path as it goes at the start of a ProxyCommand. ssh expands `%` tokens first, so
/// any `%` is doubled. On Unix it then runs the command with the shell: quote (only when needed)
/// for the shell. Windows' OpenSSH starts it without a shell: double quotes around spaces only.
#[cfg(windows)]
pub fn quote_command(path: &str) -> String {
    quote_windows_command(path)
}

/// A Windows program path for a ProxyCommand, with forward slashes: Windows' own OpenSSH
/// accepts them, and the ssh of Git Bash, MSYS2 and Cygwin runs the command with `sh -c`, which
/// takes each backslash as an escape and loses it (`C:\Users\a\hubssh.exe` runs as
/// `C:Usersahubssh.exe`).
#[cfg_attr(not(windows), allow(dead_code))]
fn quote_windows_command(path: &str) -> String {
    let path = path.replace('\\', "/");
    let quoted = if path.contains([' ', '\t']) {
        format!("\"{path}\"")
    } else {
        path
    };
    quoted.replace('%', "%%")
}

/// The program path as it goes at the start of a ProxyCommand. ssh expands `%` tokens first, so
/// any `%` is doubled. On Unix it then runs the command with the shell: quote (only when needed)
/// for the shell. Windows' OpenSSH starts it without a shell: double quotes around spaces only.
#[cfg(not(windows))]
pub fn quote_command(path: &str) -> String {
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@".contains(c));
    let quoted = if plain && !path.is_empty() {
        path.to_owned()
    } else {
        let mut q = String::from("\"");
        for c in path.chars() {
            if "\"\\$`".contains(c) {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    };
    quoted.replace('%', "%%")
}

/// Whether `name` can be a `Host` name hubssh writes (no patterns, spaces or quotes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A short diff of two blocks, for `--dry-run`.
pub fn diff(old: &str, new: &str) -> String {
    let mut out = String::new();
    for line in old.lines() {
        if !new.lines().any(|l| l == line) {
            out.push_str(&format!("-{line}\n"));
        }
    }
    for line in new.lines() {
        if !old.lines().any(|l| l == line) {
            out.push_str(&format!("+{line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> BTreeMap<String, Host> {
        let mut h = BTreeMap::new();
        h.insert(
            "myhub".to_owned(),
            Host {
                hub: "https://hub.example.org".into(),
                user: "alice".into(),
                server: String::new(),
                start: false,
            },
        );
        h
    }

    #[test]
    fn splices_and_leaves_the_rest_alone() {
        // Before the first section (with its comment), so a `Host *` cannot override it.
        let globals = "Include more\nUser global\n\n";
        let hand =
            format!("{globals}# mine\n#\nHost *\n  User x\n\nHost a\n  ServerAliveInterval 5");
        let block = render(&hosts(), "/usr/bin/hubssh");
        let once = splice(&hand, &block).unwrap();
        assert_eq!(
            once,
            format!("{globals}{block}\n{}", &hand[globals.len()..])
        );
        assert_eq!(current(&once).unwrap(), block);
        assert_eq!(splice(&once, &block).unwrap(), once);
        assert_eq!(splice(&once, "").unwrap(), hand);
        let lower = "match host x\n  User y\n";
        assert!(splice(lower, &block).unwrap().starts_with(&block));
        // Only global options: at the end.
        let hand = "User x\nServerAliveInterval 5";
        let once = splice(hand, &block).unwrap();
        assert!(once.starts_with(hand));
        let removed = splice(&once, "").unwrap();
        assert_eq!(removed, format!("{hand}\n\n"));
        // A block in the middle stays in the middle.
        let middle = format!("Host a\n{block}Host b\n");
        let changed = splice(&middle, "X\n").unwrap();
        assert_eq!(changed, "Host a\nX\nHost b\n");
    }

    #[test]
    fn broken_markers_are_errors() {
        assert_eq!(
            splice(&format!("{START}\nHost x\n"), ""),
            Err(BlockError::Unclosed(1))
        );
        assert_eq!(
            splice(&format!("a\n{END}\n"), ""),
            Err(BlockError::Unopened(2))
        );
        let two = format!("{START}\n{END}\n{START}\n{END}\n");
        assert_eq!(splice(&two, ""), Err(BlockError::Twice(3)));
    }

    #[cfg(not(windows))]
    #[test]
    fn renders_entries() {
        let block = render(&hosts(), "/opt/my tools/hubssh");
        assert!(block.contains("Host myhub\n  User alice\n"));
        assert!(block.contains("ProxyCommand \"/opt/my tools/hubssh\" proxy myhub\n"));
        assert!(block.contains("HostKeyAlias hubssh.hub-example-org.alice\n"));
        assert_eq!(render(&BTreeMap::new(), "x"), "");
    }

    #[test]
    fn aliases_and_quoting() {
        let h = Host {
            hub: "http://127.0.0.1:8000/jh".into(),
            user: "a.b".into(),
            server: "gpu".into(),
            start: false,
        };
        assert_eq!(host_key_alias(&h), "hubssh.127-0-0-1.8000.jh.a-b.gpu");
        assert_eq!(quote_command("/usr/bin/hubssh"), "/usr/bin/hubssh");
        #[cfg(not(windows))]
        assert_eq!(
            quote_command("/opt/a \"b\"/$x"),
            "\"/opt/a \\\"b\\\"/\\$x\""
        );
        assert_eq!(quote_command("/x/100%/hubssh"), "\"/x/100%%/hubssh\"");
        assert_eq!(
            quote_windows_command(r"C:\Users\a b\bin\hubssh.exe"),
            "\"C:/Users/a b/bin/hubssh.exe\""
        );
        assert_eq!(
            quote_windows_command(r"C:\tools\100%\hubssh.exe"),
            "C:/tools/100%%/hubssh.exe"
        );
        assert!(valid_name("my-hub.gpu_1"));
        assert!(!valid_name("a b") && !valid_name("*") && !valid_name(""));
    }
}
