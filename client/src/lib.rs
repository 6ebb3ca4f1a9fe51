//! hubssh: the client side of hubssh. `hubssh proxy URL` is an ssh `ProxyCommand` that carries
//! ssh's stdin/stdout over a WebSocket to hubsshd, authenticated with the hub's API token.
//!
//! Map: [`endpoint`] parses the URL; [`token`] finds the token; [`tls`] sets up rustls;
//! [`net_proxy`] tunnels through HTTP proxies; [`connect`] opens the WebSocket; [`error`] explains refusals; [`bridge`] pumps bytes;
//! [`stdio`] serves ssh's pipes; [`proxy`] ties them together.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod connect;
pub mod endpoint;
pub mod error;
pub mod net_proxy;
pub mod proxy;
pub mod stdio;
pub mod tls;
pub mod token;
