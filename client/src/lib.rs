//! hubssh: the client side of hubssh. `hubssh proxy URL` is an ssh `ProxyCommand` that carries
//! ssh's stdin/stdout over a WebSocket to hubsshd, authenticated with the hub's API token.
//!
//! Map: [`endpoint`] parses the URL; [`token`] finds the token; [`tls`] sets up rustls;
//! [`net_proxy`] tunnels through HTTP proxies; [`connect`] opens the WebSocket; [`error`] explains refusals; [`bridge`] pumps bytes;
//! [`stdio`] serves ssh's pipes; [`proxy`] ties them together. Around the tunnel: [`hub_api`]
//! calls the hub's REST API; [`store`] keeps logins and named hosts; [`ssh_config`] writes the
//! managed ssh config block; [`commands`] implements login, config and `--start`; [`doctor`] checks every hop.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod commands;
pub mod connect;
pub mod doctor;
pub mod endpoint;
pub mod error;
pub mod hub_api;
pub mod net_proxy;
pub mod proxy;
pub mod ssh_config;
pub mod stdio;
pub mod store;
pub mod tls;
pub mod token;
