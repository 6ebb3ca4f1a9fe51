//! `hubssh`: parses the command line and runs the chosen command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hubssh::bridge::BridgeOptions;
use hubssh::proxy::{self, ProxyConfig};

/// SSH into your JupyterHub server over HTTPS.
#[derive(Parser, Debug)]
#[command(name = "hubssh", version)]
struct Cli {
    /// Log debug detail to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bridge stdin/stdout to a server's sshd endpoint (use as ssh's ProxyCommand).
    Proxy {
        /// The endpoint, e.g. https://hub.example.org/user/NAME/sshd/
        url: String,
        /// Read the hub API token from this file [default: $HUBSSH_TOKEN, $JUPYTERHUB_API_TOKEN].
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Also trust the CA certificates in this PEM file.
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Do not check the hub's TLS certificate (prints a warning). Prefer --cacert.
        #[arg(long)]
        insecure: bool,
        /// HTTP proxy for the tunnel, http://[USER:PASS@]HOST:PORT [default: $HTTPS_PROXY,
        /// $ALL_PROXY (for ws://: $HTTP_PROXY), minus $NO_PROXY].
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        /// Seconds between WebSocket pings (0: none). Three missed pings end the connection.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        ping_interval: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start: {e}")),
    };
    match cli.command {
        Command::Proxy {
            url,
            token_file,
            cacert,
            insecure,
            proxy,
            ping_interval,
        } => {
            let config = ProxyConfig {
                url,
                token_file,
                cacert,
                insecure,
                proxy,
                bridge: BridgeOptions {
                    ping_interval: (ping_interval > 0).then(|| Duration::from_secs(ping_interval)),
                    ..BridgeOptions::default()
                },
            };
            match runtime.block_on(proxy::run(config)) {
                Ok(end) => {
                    tracing::debug!(?end, "tunnel closed");
                    std::process::exit(0)
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

/// Prints `hubssh: <message>` on stderr and exits 1. stdout is never written: it is ssh's.
fn fail(message: &str) -> ! {
    eprintln!("hubssh: {message}");
    std::process::exit(1)
}

fn init_tracing(verbose: bool) {
    let default = if verbose {
        "hubssh=debug"
    } else {
        "hubssh=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUBSSH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
