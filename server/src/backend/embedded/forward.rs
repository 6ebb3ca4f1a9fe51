//! Port and socket forwarding: `direct-tcpip` (`ssh -L`, `-D`, VS Code's tunnels),
//! `direct-streamlocal` (`-L` to a unix socket), and the listeners behind `tcpip-forward`
//! (`ssh -R`), `streamlocal-forward` (`ssh -R` from a unix socket, as for a forwarded GnuPG
//! agent) and agent forwarding, which open channels back to the client.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::channels::Channels;
use super::inbox::Inbox;
use super::process::forward_output;
use crate::listener::{parent_dir, SocketFile};

/// How long connecting to a forward's target may take before the channel open fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a forward target has, once the SSH connection is gone, to take what the client sent.
const GONE_DRAIN: Duration = Duration::from_secs(10);

/// Where a `direct-*` channel goes.
#[derive(Debug)]
pub enum Target {
    Tcp(String, u16),
    Unix(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `target`, then accepts the channel and carries bytes both ways; a failed connect
/// rejects the channel open (the client reports it), it never hangs.
pub fn open_direct(
    target: Target,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    channels: Arc<Channels>,
) {
    let (read, write) = channel.split();
    drop(read); // bytes arrive through the inbox: never stall the connection on this channel
    let id = write.id();
    let inbox = channels.register(id);
    tokio::spawn(
        async move {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
                match &target {
                    Target::Tcp(host, port) => TcpStream::connect((host.as_str(), *port))
                        .await
                        .map(Stream::Tcp),
                    Target::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
                }
            })
            .await;
            let stream = match connected {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    info!(%e, ?target, "forward target refused");
                    channels.remove(id); // no close will come for a channel never opened
                    return reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
                Err(_) => {
                    info!(?target, "forward target did not answer");
                    channels.remove(id);
                    return reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            };
            reply.accept().await;
            debug!(?target, "forward open");
            match stream {
                Stream::Tcp(s) => {
                    let _ = s.set_nodelay(true);
                    pump(s, write, inbox, None, &channels).await
                }
                Stream::Unix(s) => pump(s, write, inbox, None, &channels).await,
            }
        }
        .in_current_span(),
    );
}

/// Carries bytes between a local stream and a channel until both directions end, then reports
/// `exit_status` (if any: a subsystem's, which `scp` insists on) and closes the channel. When the
/// client closes the channel or the SSH connection goes, the stream is closed without waiting
/// for its end (an idle peer would keep the task and the stream for good). What the client sent
/// before still reaches it: all of it after a close, as with sshd; after the connection is
/// gone, what the stream takes within [`GONE_DRAIN`].
pub async fn pump<S>(
    stream: S,
    channel: ChannelWriteHalf<Msg>,
    inbox: Inbox,
    exit_status: Option<u32>,
    channels: &Channels,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let closed = inbox.closed();
    let up = async {
        tokio::select! {
            r = inbox.pump(w) => if let Err(e) = r {
                debug!(%e, "forward target stopped reading");
            },
            () = async {
                channels.gone().await;
                tokio::time::sleep(GONE_DRAIN).await;
            } => debug!("ssh connection gone: the forward target did not take the rest in time"),
        }
    };
    let down = async {
        tokio::select! {
            _ = forward_output(r, channel.make_writer()) => {}
            _ = channels.gone() => {
                debug!("ssh connection gone: closing the forwarded connection");
                return;
            }
            () = closed.cancelled() => {
                debug!("client closed the channel: closing the forwarded connection");
                return;
            }
        }
        if let Some(code) = exit_status {
            let _ = channel.exit_status(code).await;
        }
        // EOF as soon as this side is done: the peer may be waiting for it to finish its own.
        let _ = channel.eof().await;
    };
    tokio::join!(up, down);
    let _ = channel.close().await;
}

/// After a failed accept (out of file descriptors, most often), a pause before the next: the
/// listener stays, and the loop does not spin while the condition lasts.
async fn accept_failed(e: std::io::Error) {
    warn!(%e, "accept failed on a forwarded listener: retrying");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A listener task that stops when dropped (its session ended or the forward was cancelled),
/// and removes its socket file then, if it listens on one.
pub struct ListenerTask {
    task: JoinHandle<()>,
    _socket: Option<SocketFile>,
}

impl ListenerTask {
    fn new(task: JoinHandle<()>) -> Self {
        ListenerTask {
            task,
            _socket: None,
        }
    }
}

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a unix socket at `path` for a `streamlocal-forward`, as sshd does by default
/// (`StreamLocalBindMask 0177`, `StreamLocalBindUnlink no`): the socket is 0600 from the moment
/// it appears at `path`, and a file already there is an error, never replaced. It is bound in a
/// private directory beside `path` and linked into place, since the umask is the process's and
/// other sessions create files meanwhile.
pub fn bind_forward_socket(path: &Path) -> std::io::Result<(UnixListener, SocketFile)> {
    use std::os::unix::fs::PermissionsExt;
    let parent = parent_dir(path);
    // A short name: the staged path must fit a socket address wherever `path` does.
    let private = tempfile::Builder::new().prefix(".hsf").tempdir_in(parent)?; // 0700
    let staged = private.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    // Ours from before the link: should it fail, what is at `path` is another file and stays.
    let socket = SocketFile::new(path.to_owned(), &staged)?;
    std::fs::hard_link(&staged, path)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, socket))
}

/// Accepts on `listener` and opens a `forwarded-streamlocal` channel to the client for each
/// connection, naming the socket `path` as the client asked for it (that is how the client
/// finds its forward).
pub fn serve_streamlocal_forward(
    listener: UnixListener,
    socket: SocketFile,
    path: String,
    handle: Handle,
    channels: Arc<Channels>,
) -> ListenerTask {
    let open = move |handle: Handle| {
        let path = path.clone();
        async move { handle.channel_open_forwarded_streamlocal(path).await }
    };
    ListenerTask {
        task: serve_unix(listener, handle, channels, open, "forwarded connection"),
        _socket: Some(socket),
    }
}

/// Accepts on `listener` and, for each connection, opens a channel to the client with `open`
/// and pumps the connection over it.
fn serve_unix<F, Opening>(
    listener: UnixListener,
    handle: Handle,
    channels: Arc<Channels>,
    open: F,
    what: &'static str,
) -> JoinHandle<()>
where
    F: Fn(Handle) -> Opening + Send + 'static,
    Opening: Future<Output = Result<Channel<Msg>, russh::Error>> + Send + 'static,
{
    tokio::spawn(
        async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let (opening, channels) = (open(handle.clone()), channels.clone());
                tokio::spawn(
                    async move {
                        match opening.await {
                            Ok(channel) => attach(stream, channel, &channels).await,
                            Err(e) => debug!(%e, "client refused the {what}"),
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        .in_current_span(),
    )
}

/// Accepts on `listeners` (one port, both families) and opens a `forwarded-tcpip` channel to the
/// client for each connection.
pub fn serve_tcpip_forward(
    listeners: Vec<TcpListener>,
    address: String,
    port: u32,
    handle: Handle,
    channels: Arc<Channels>,
) -> ListenerTask {
    let mut each = tokio::task::JoinSet::new(); // aborted with the task that owns it
    for listener in listeners {
        let (address, handle, channels) = (address.clone(), handle.clone(), channels.clone());
        each.spawn(accept_forwarded(listener, address, port, handle, channels).in_current_span());
    }
    ListenerTask::new(tokio::spawn(async move {
        while each.join_next().await.is_some() {}
    }))
}

async fn accept_forwarded(
    listener: TcpListener,
    address: String,
    port: u32,
    handle: Handle,
    channels: Arc<Channels>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (handle, channels, address) = (handle.clone(), channels.clone(), address.clone());
        tokio::spawn(
            async move {
                let opened = handle
                    .channel_open_forwarded_tcpip(
                        address,
                        port,
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await;
                match opened {
                    Ok(channel) => attach(stream, channel, &channels).await,
                    Err(e) => debug!(%e, "client refused the forwarded connection"),
                }
            }
            .in_current_span(),
        );
    }
}

/// Accepts agent connections on `listener` and opens an agent channel to the client for each.
pub fn serve_agent(
    listener: UnixListener,
    handle: Handle,
    channels: Arc<Channels>,
) -> ListenerTask {
    let open = |handle: Handle| async move { handle.channel_open_agent().await };
    ListenerTask::new(serve_unix(
        listener,
        handle,
        channels,
        open,
        "agent channel",
    ))
}

/// Pumps a locally accepted stream over a channel the server opened.
async fn attach<S>(stream: S, channel: Channel<Msg>, channels: &Channels)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = channel.split();
    drop(read);
    let id = write.id();
    let inbox = channels.register(id);
    // The entry goes with the client's close, which answers the one `pump` sends.
    pump(stream, write, inbox, None, channels).await;
}
