//! The terminal modes a client sends with `pty-req` (RFC 4254 section 8), applied to the session's
//! pty as OpenSSH's sshd does: the user's erase key, interrupt character, flow control and the
//! like arrive in the remote shell as they are set locally.

use std::os::fd::AsFd;

use nix::sys::termios::{
    tcgetattr, tcsetattr, ControlFlags, InputFlags, LocalFlags, OutputFlags, SetArg,
    SpecialCharacterIndices as Cc, Termios,
};
use russh::Pty;

/// Applies `modes` to the terminal `tty`. Modes this platform lacks are skipped, as OpenSSH does;
/// so are the line speeds (meaningless on a pty) and the upper-case-only modes IUCLC and XCASE.
pub fn apply(tty: &impl AsFd, modes: &[(Pty, u32)]) -> nix::Result<()> {
    if modes.is_empty() {
        return Ok(());
    }
    let mut t = tcgetattr(tty)?;
    for &(mode, value) in modes {
        set(&mut t, mode, value);
    }
    tcsetattr(tty, SetArg::TCSANOW, &t)
}

fn set(t: &mut Termios, mode: Pty, value: u32) {
    if let Some(index) = control_char(mode) {
        // 255 means "disabled" on the wire; _POSIX_VDISABLE is 0 on Linux.
        let c = if value == 255 {
            nix::libc::_POSIX_VDISABLE
        } else {
            value as nix::libc::cc_t
        };
        t.control_chars[index as usize] = c;
        return;
    }
    let on = value != 0;
    if let Some(f) = input_flag(mode) {
        t.input_flags.set(f, on);
    } else if let Some(f) = local_flag(mode) {
        t.local_flags.set(f, on);
    } else if let Some(f) = output_flag(mode) {
        t.output_flags.set(f, on);
    } else if let Some(f) = control_flag(mode) {
        t.control_flags.set(f, on);
    }
}

fn control_char(mode: Pty) -> Option<Cc> {
    Some(match mode {
        Pty::VINTR => Cc::VINTR,
        Pty::VQUIT => Cc::VQUIT,
        Pty::VERASE => Cc::VERASE,
        Pty::VKILL => Cc::VKILL,
        Pty::VEOF => Cc::VEOF,
        Pty::VEOL => Cc::VEOL,
        Pty::VEOL2 => Cc::VEOL2,
        Pty::VSTART => Cc::VSTART,
        Pty::VSTOP => Cc::VSTOP,
        Pty::VSUSP => Cc::VSUSP,
        Pty::VREPRINT => Cc::VREPRINT,
        Pty::VWERASE => Cc::VWERASE,
        Pty::VLNEXT => Cc::VLNEXT,
        Pty::VDISCARD => Cc::VDISCARD,
        _ => return None,
    })
}

fn input_flag(mode: Pty) -> Option<InputFlags> {
    Some(match mode {
        Pty::IGNPAR => InputFlags::IGNPAR,
        Pty::PARMRK => InputFlags::PARMRK,
        Pty::INPCK => InputFlags::INPCK,
        Pty::ISTRIP => InputFlags::ISTRIP,
        Pty::INLCR => InputFlags::INLCR,
        Pty::IGNCR => InputFlags::IGNCR,
        Pty::ICRNL => InputFlags::ICRNL,
        Pty::IXON => InputFlags::IXON,
        Pty::IXANY => InputFlags::IXANY,
        Pty::IXOFF => InputFlags::IXOFF,
        Pty::IMAXBEL => InputFlags::IMAXBEL,
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        Pty::IUTF8 => InputFlags::IUTF8,
        _ => return None,
    })
}

fn local_flag(mode: Pty) -> Option<LocalFlags> {
    Some(match mode {
        Pty::ISIG => LocalFlags::ISIG,
        Pty::ICANON => LocalFlags::ICANON,
        Pty::ECHO => LocalFlags::ECHO,
        Pty::ECHOE => LocalFlags::ECHOE,
        Pty::ECHOK => LocalFlags::ECHOK,
        Pty::ECHONL => LocalFlags::ECHONL,
        Pty::NOFLSH => LocalFlags::NOFLSH,
        Pty::TOSTOP => LocalFlags::TOSTOP,
        Pty::IEXTEN => LocalFlags::IEXTEN,
        Pty::ECHOCTL => LocalFlags::ECHOCTL,
        Pty::ECHOKE => LocalFlags::ECHOKE,
        Pty::PENDIN => LocalFlags::PENDIN,
        _ => return None,
    })
}

fn output_flag(mode: Pty) -> Option<OutputFlags> {
    Some(match mode {
        Pty::OPOST => OutputFlags::OPOST,
        #[cfg(target_os = "linux")]
        Pty::OLCUC => OutputFlags::OLCUC,
        Pty::ONLCR => OutputFlags::ONLCR,
        Pty::OCRNL => OutputFlags::OCRNL,
        Pty::ONOCR => OutputFlags::ONOCR,
        Pty::ONLRET => OutputFlags::ONLRET,
        _ => return None,
    })
}

fn control_flag(mode: Pty) -> Option<ControlFlags> {
    Some(match mode {
        Pty::CS7 => ControlFlags::CS7,
        Pty::CS8 => ControlFlags::CS8,
        Pty::PARENB => ControlFlags::PARENB,
        Pty::PARODD => ControlFlags::PARODD,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn modes_reach_the_pty() {
        let (_pty, pts) = pty_process::open().expect("a pty");
        apply(
            &pts,
            &[
                (Pty::VERASE, 8),    // ^H
                (Pty::VINTR, 2),     // ^B
                (Pty::VWERASE, 255), // disabled
                (Pty::ECHO, 0),
                (Pty::IXON, 1),
                (Pty::ONLCR, 0),
                (Pty::TTY_OP_ISPEED, 38400), // speeds: skipped on a pty
            ],
        )
        .expect("apply");
        let t = tcgetattr(&pts).expect("tcgetattr");
        assert_eq!(t.control_chars[Cc::VERASE as usize], 8);
        assert_eq!(t.control_chars[Cc::VINTR as usize], 2);
        assert_eq!(
            t.control_chars[Cc::VWERASE as usize],
            nix::libc::_POSIX_VDISABLE
        );
        assert!(!t.local_flags.contains(LocalFlags::ECHO));
        assert!(t.input_flags.contains(InputFlags::IXON));
        assert!(!t.output_flags.contains(OutputFlags::ONLCR));
    }
}
