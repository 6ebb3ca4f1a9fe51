//! Bigger pipes for what OpenSSH writes to us: at the default 64 KiB, ssh (or sshd), the busiest
//! process of a transfer, is woken for every 64 KiB it has left to write. hubssh grows its stdin
//! (the pipe ssh writes into), hubsshd the stdout of `sshd -i`.
//!
//! The pipes we write into OpenSSH keep their default size: measured on a 2-core machine, a 1 MiB
//! pipe there cost 10-15% of the throughput in that direction (OpenSSH then takes in up to 256 KiB
//! at a time, data cooler in cache, and the relay runs further ahead of it), so a grown pipe pays
//! only where we are the reader.

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
