//! Bigger pipes: at the default 64 KiB every 64 KiB of a transfer costs a wake-up of each side.
//! hubssh grows the pipes ssh gives it, hubsshd the pipes to `sshd -i`.

use std::os::fd::AsFd;

/// Capacity asked for (Linux; an unprivileged process may ask up to
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
#[cfg(target_os = "linux")]
const PIPE_SIZE: i32 = 1 << 20;

/// Makes the pipe behind `fd` bigger; anything else (a terminal, a socket, a file), or a pipe that
/// cannot grow, stays as it is.
pub fn grow(fd: impl AsFd) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fcntl, FcntlArg};
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}
