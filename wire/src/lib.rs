//! What hubssh and hubsshd share on the wire.
//!
//! Map: [`frame`] parses and writes WebSocket frame headers and masks payloads; [`ws`] turns a
//! WebSocket (after its handshake) into a byte stream; [`pump`] moves bytes between a tunnel and
//! a local pair; [`pipes`] grows the pipes OpenSSH writes into (unix).
#![forbid(unsafe_code)]

pub mod frame;
#[cfg(unix)]
pub mod pipes;
pub mod pump;
pub mod ws;

pub use pump::{pump, PumpError, PumpOptions, Pumped};
pub use ws::{Keepalive, ReadEnd, Role, WsStream};
