//! The memory allocator's one setting. The hubsshd binary allocates with mimalloc, which on Linux
//! commits its arenas up front by default and then keeps what a connection touched: hubsshd
//! started at 17 MiB resident, an idle `sshd -i` session cost 560 KiB and a session after a
//! download 2.2 MiB, kept after it closed. Committing on demand ([`OPTION`]) it started at 8 MiB,
//! with 160 KiB per idle session and 1.3 MiB after a download, at the same CPU cost per byte.
//!
//! mimalloc reads the option from the environment while the process loads, before `main` (setting
//! it from `main` was measured to change nothing), so [`settle`] starts hubsshd once more with it
//! set. The option stays hubsshd's own: sessions do not inherit it.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The environment variable and value hubsshd runs with.
pub const OPTION: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// Set beside [`OPTION`] when hubsshd set it, so the option can be kept from sessions. A value
/// set by whoever started hubsshd is theirs, and sessions get it as they get the rest.
const SET_BY_HUBSSHD: &str = "HUBSSHD_SET_ALLOCATOR_OPTION";

/// Starts hubsshd again with [`OPTION`] set: the same pid, arguments, name, environment
/// otherwise, file descriptors and signal state. Returns when the option is already set, or when
/// hubsshd cannot be started again (then it runs as it is, nothing changed). Call it first in
/// `main`, before any thread starts.
pub fn settle() {
    if !cfg!(target_os = "linux") || std::env::var_os(OPTION.0).is_some() {
        return;
    }
    let Some(exe) = this_binary() else {
        return;
    };
    let mut env: Vec<OsString> = std::env::vars_os()
        .map(|(k, v)| [k, "=".into(), v].into_iter().collect())
        .collect();
    env.push(format!("{}={}", OPTION.0, OPTION.1).into());
    env.push(format!("{SET_BY_HUBSSHD}=1").into());
    let c = |s: OsString| CString::new(s.into_vec()).ok();
    let args: Option<Vec<CString>> = std::env::args_os().map(c).collect();
    let env: Option<Vec<CString>> = env.into_iter().map(c).collect();
    if let (Some(path), Some(args), Some(env)) = (c(exe.into_os_string()), args, env) {
        // Returns only on failure. (nix leaves the signal state alone, unlike std's exec.)
        let _ = nix::unistd::execve(&path, &args, &env);
    }
}

/// The file to start again so the process keeps its name: `argv[0]` when it is a path to this
/// binary (a symlink's name is kept), else the binary itself when `argv[0]` has its name (found
/// on PATH). `None` when it is not clear what runs (a dynamic loader running hubsshd, a binary
/// deleted since it started): then hubsshd runs as it is.
fn this_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    if argv0.as_os_str().as_bytes().contains(&b'/')
        && std::fs::canonicalize(&argv0).ok().as_ref() == Some(&exe)
    {
        return Some(argv0);
    }
    (argv0.file_name()? == exe.file_name()?).then_some(exe)
}

/// Whether an environment variable of hubsshd's is its own allocator setting, to leave out of
/// what sessions and the processes hubsshd starts inherit.
pub fn is_own_setting(name: &OsStr) -> bool {
    (name == OPTION.0 || name == SET_BY_HUBSSHD) && std::env::var_os(SET_BY_HUBSSHD).is_some()
}
