//! The russh handler for one connection: authentication, session channels (pty, env, shell,
//! exec, sftp), signals and resizes, forwarding requests, and the routing of incoming bytes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use russh::keys::ssh_key::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelWriteHalf, MethodKind, MethodSet, Pty, Sig};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn, Instrument};

use super::auth::{self, SshAuth};
use super::channels::Channels;
use super::forward::{self, ListenerTask, Target};
use super::process::{self, Control, Launch, PtyParams};
use super::sftp::Sftp;
use super::user::{self, UserInfo};

/// What every connection of this server shares.
#[derive(Debug)]
pub struct Shared {
    pub user: UserInfo,
    pub auth: SshAuth,
}

/// A session channel before and while its command runs.
#[derive(Default)]
struct SessionChannel {
    /// Taken when the command starts.
    writer: Option<ChannelWriteHalf<Msg>>,
    pty: Option<PtyParams>,
    env: Vec<(OsString, OsString)>,
    control: Option<mpsc::UnboundedSender<Control>>,
}

/// One connection's state.
pub struct Handler {
    shared: Arc<Shared>,
    channels: Arc<Channels>,
    sessions: HashMap<ChannelId, SessionChannel>,
    /// `-R` listeners by "address:port" or "unix:PATH", and the agent listener; closed with the
    /// connection.
    listeners: HashMap<String, ListenerTask>,
    agent: Option<tempfile::TempDir>,
    /// Told when the client has logged in (the login grace period ends).
    logged_in: Arc<tokio::sync::Notify>,
}

impl Drop for Handler {
    /// The connection has ended: its channels end with it, whoever still holds the table.
    fn drop(&mut self) {
        self.channels.close();
    }
}

/// Where the agent socket lives inside its private directory.
const AGENT_SOCKET: &str = "agent.sock";

impl Handler {
    pub fn new(shared: Arc<Shared>, logged_in: Arc<tokio::sync::Notify>) -> Self {
        Handler {
            shared,
            channels: Arc::new(Channels::default()),
            sessions: HashMap::new(),
            listeners: HashMap::new(),
            agent: None,
            logged_in,
        }
    }

    fn key_allowed(&self, user: &str, key: &PublicKey) -> Auth {
        match &self.shared.auth {
            SshAuth::Keys { file, home } if auth::is_authorized(file, home, key) => Auth::Accept,
            SshAuth::Keys { .. } => {
                info!(user, "public key not in authorized_keys");
                reject()
            }
            SshAuth::Tunnel => Auth::Accept,
        }
    }

    /// Starts the command for a session channel.
    fn launch(&mut self, id: ChannelId, command: Option<OsString>, session: &mut Session) {
        let Some(chan) = self.sessions.get_mut(&id) else {
            session.channel_failure(id).ok();
            return;
        };
        let Some(writer) = chan.writer.take() else {
            // A second shell/exec on the same channel.
            session.channel_failure(id).ok();
            return;
        };
        let mut env = self.shared.user.base_env();
        env.extend(chan.env.iter().cloned());
        env.push(("SSH_CONNECTION".into(), "127.0.0.1 0 127.0.0.1 0".into()));
        env.push(("SSH_CLIENT".into(), "127.0.0.1 0 0".into()));
        if let Some(dir) = &self.agent {
            env.push((
                "SSH_AUTH_SOCK".into(),
                dir.path().join(AGENT_SOCKET).into_os_string(),
            ));
        }
        let launch = Launch {
            shell: self.shared.user.shell.clone(),
            command,
            pty: chan.pty.clone(),
            env,
            cwd: self.shared.user.home.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        chan.control = Some(tx);
        let inbox = self.channels.register(id);
        let handle = session.handle();
        tokio::spawn(process::run(launch, writer, inbox, rx, handle).in_current_span());
        session.channel_success(id).ok();
    }

    /// Where a `-R` from the unix socket `socket_path` listens, and its key in `listeners`. A
    /// relative path is taken from the home directory, where the session's commands start.
    fn forward_socket(&self, socket_path: &str) -> (std::path::PathBuf, String) {
        let path = self.shared.user.home.join(socket_path);
        let key = format!("unix:{}", path.display());
        (path, key)
    }

    fn start_sftp(&mut self, id: ChannelId, session: &mut Session) {
        let Some(writer) = self.sessions.get_mut(&id).and_then(|c| c.writer.take()) else {
            session.channel_failure(id).ok();
            return;
        };
        let inbox = self.channels.register(id);
        let home = self.shared.user.home.clone();
        let span = tracing::Span::current();
        // Each SFTP session gets its own thread, as OpenSSH runs an sftp-server process per
        // session: file system calls then run inline on it instead of handing every 32 KiB write
        // to tokio's blocking pool, and a slow disk (an NFS home) stalls only this session.
        let spawned = std::thread::Builder::new()
            .name("hubsshd-sftp".into())
            .spawn(move || {
                let _span = span.enter();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return warn!(%e, "cannot start the SFTP session"),
                };
                runtime.block_on(async move {
                    // The SFTP server reads the inbox and writes the channel directly; it drops
                    // the stream when the client ends the session, and then scp wants an exit
                    // status.
                    let (done_tx, done) = oneshot::channel();
                    let out = SftpOut::new(writer.make_writer(), done_tx, inbox.closed());
                    let stream = tokio::io::join(inbox.into_reader(), out);
                    russh_sftp::server::run(stream, Sftp::new(home)).await;
                    let _ = done.await;
                    let _ = writer.exit_status(0).await;
                    let _ = writer.eof().await;
                    let _ = writer.close().await;
                });
            });
        if let Err(e) = spawned {
            warn!(%e, "cannot start the SFTP session");
            session.channel_failure(id).ok();
            return;
        }
        session.channel_success(id).ok();
    }
}

/// The SFTP server's side of its channel: signals when it is dropped (russh-sftp's server loop
/// gives no other sign of its end), and once the channel is closed (by the client, or with its
/// connection) takes every write without sending it. A write waiting for window that will never
/// open (the client vanished mid-download) then no longer holds the session: the server goes on
/// to apply what the client sent before, reaches the inbox's end and stops.
struct SftpOut<W> {
    inner: W,
    done: Option<oneshot::Sender<()>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<W> SftpOut<W> {
    fn new(inner: W, done: oneshot::Sender<()>, closed: CancellationToken) -> Self {
        SftpOut {
            inner,
            done: Some(done),
            closed: Box::pin(closed.cancelled_owned()),
        }
    }

    /// Whether the channel is closed; if not, the task is woken when it is.
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        Future::poll(self.closed.as_mut(), cx).is_ready()
    }
}

impl<W> Drop for SftpOut<W> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SftpOut<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A terminal dimension from the wire (u32) as a pty takes it, clamped.
fn dimension(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(match self.shared.auth {
            SshAuth::Tunnel => {
                info!(user, "accepted: the tunnel is authenticated");
                self.logged_in.notify_one();
                Auth::Accept
            }
            SshAuth::Keys { .. } => reject(),
        })
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.channels.set_session(session.handle());
        Ok(())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_allowed(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let verdict = self.key_allowed(user, key.public_key);
        if matches!(verdict, Auth::Accept) {
            info!(user, key = %key.public_key.fingerprint(Default::default()), "accepted public key");
            self.logged_in.notify_one();
        }
        Ok(verdict)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (read, write) = channel.split();
        drop(read); // bytes arrive through the inbox: never stall the connection on one channel
        self.sessions.insert(
            write.id(),
            SessionChannel {
                writer: Some(write),
                ..Default::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match u16::try_from(port) {
            Ok(port) => forward::open_direct(
                Target::Tcp(host.to_owned(), port),
                channel,
                reply,
                self.channels.clone(),
            ),
            Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        forward::open_direct(
            Target::Unix(socket_path.to_owned()),
            channel,
            reply,
            self.channels.clone(),
        );
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.push(channel, data).await;
        Ok(())
    }

    /// Extended data from a client has no meaning (OpenSSH's never sends it): dropped, as by
    /// sshd, and its window given back at once.
    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.grant_window(channel, u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.eof(channel);
        Ok(())
    }

    async fn channel_open_confirmation(
        &mut self,
        id: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.opened(id);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(channel);
        self.sessions.remove(&channel);
        debug!(
            ?channel,
            sessions = self.sessions.len(),
            inboxes = self.channels.len(),
            "channel closed: what is left open"
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.sessions.get_mut(&channel) {
            Some(chan) => {
                chan.pty = Some(PtyParams {
                    term: term.to_owned(),
                    cols: dimension(cols),
                    rows: dimension(rows),
                    modes: modes.to_vec(),
                });
                session.channel_success(channel)?;
            }
            None => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.sessions.get_mut(&channel) {
            Some(chan) if user::accept_env(name) => {
                chan.env.push((name.into(), value.into()));
                session.channel_success(channel)?;
            }
            _ => {
                debug!(name, "env request refused");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!("shell");
        self.launch(channel, None, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        debug!(command = %String::from_utf8_lossy(data), "exec");
        // Bytes as they came, as sshd passes them: file names need not be UTF-8.
        let command = std::os::unix::ffi::OsStringExt::from_vec(data.to_vec());
        self.launch(channel, Some(command), session);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            info!("sftp");
            self.start_sftp(channel, session);
        } else {
            info!(name, "unknown subsystem refused");
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.sessions.get_mut(&channel) {
            let (cols, rows) = (dimension(cols), dimension(rows));
            match (&chan.control, &mut chan.pty) {
                (Some(control), _) => {
                    let _ = control.send(Control::Resize { cols, rows });
                }
                (None, Some(pty)) => (pty.cols, pty.rows) = (cols, rows),
                (None, None) => {}
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(control) = self.sessions.get(&channel).and_then(|c| c.control.as_ref()) {
            let _ = control.send(Control::Signal(signal));
        }
        Ok(())
    }

    /// No X11 forwarding (no X server nor xauth in a hub's server, as a rule): a failure, as from
    /// sshd with `X11Forwarding no`, so that ssh says so instead of waiting for a display.
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        debug!("X11 forwarding refused: not supported");
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.agent.is_some() {
            return Ok(true);
        }
        let dir = match tempfile::Builder::new().prefix("hubssh-agent-").tempdir() {
            Ok(d) => d, // created 0700
            Err(e) => {
                warn!(%e, "cannot create the agent socket directory");
                return Ok(false);
            }
        };
        match tokio::net::UnixListener::bind(dir.path().join(AGENT_SOCKET)) {
            Ok(listener) => {
                let task = forward::serve_agent(listener, session.handle(), self.channels.clone());
                self.listeners.insert("agent".into(), task);
                self.agent = Some(dir);
                info!("agent forwarding on");
                Ok(true)
            }
            Err(e) => {
                warn!(%e, "cannot listen for agent connections");
                Ok(false)
            }
        }
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Like OpenSSH's `GatewayPorts no`: remote forwards listen on loopback only, both
        // families (`localhost` is ::1 first for many programs), whatever address was asked for.
        let Ok(want) = u16::try_from(*port) else {
            return Ok(false);
        };
        let v4 = match tokio::net::TcpListener::bind(("127.0.0.1", want)).await {
            Ok(l) => l,
            Err(e) => {
                info!(%e, port = want, "cannot listen for a remote forward");
                return Ok(false);
            }
        };
        let bound = v4.local_addr().map(|a| a.port()).unwrap_or(want);
        let mut listeners = vec![v4];
        match tokio::net::TcpListener::bind(("::1", bound)).await {
            Ok(v6) => listeners.push(v6),
            // No IPv6 here, or the port taken there: IPv4 alone, as sshd does.
            Err(e) => debug!(%e, port = bound, "remote forward not on ::1"),
        }
        *port = u32::from(bound);
        info!(
            address,
            port = bound,
            ipv6 = listeners.len() > 1,
            "remote forward listening on loopback"
        );
        let task = forward::serve_tcpip_forward(
            listeners,
            address.to_owned(),
            *port,
            session.handle(),
            self.channels.clone(),
        );
        self.listeners.insert(format!("{address}:{bound}"), task);
        Ok(true)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (path, key) = self.forward_socket(socket_path);
        if self.listeners.contains_key(&key) {
            return Ok(false);
        }
        match forward::bind_forward_socket(&path) {
            Ok((listener, socket)) => {
                info!(path = %path.display(), "remote forward listening on a unix socket");
                let task = forward::serve_streamlocal_forward(
                    listener,
                    socket,
                    socket_path.to_owned(),
                    session.handle(),
                    self.channels.clone(),
                );
                self.listeners.insert(key, task);
                Ok(true)
            }
            Err(e) => {
                info!(%e, path = %path.display(), "cannot listen for a remote forward");
                Ok(false)
            }
        }
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (_, key) = self.forward_socket(socket_path);
        Ok(self.listeners.remove(&key).is_some())
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .listeners
            .remove(&format!("{address}:{port}"))
            .is_some())
    }
}
