//! A WebSocket connection seen as a byte stream, after the handshake: data frames in and out,
//! control frames answered on the way, no copy of the payload where the role allows it.
//!
//! Reading unmasks payloads in place in one reused buffer and hands them out with
//! `AsyncBufRead`, so a pump writes them on without a copy. A server writes a large payload with
//! one vectored write of header and payload, straight from the caller's buffer; a client masks
//! while copying into its write buffer (one pass: RFC 6455 forbids sending the caller's bytes
//! unmasked, and they are not ours to change in place).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::frame::{self, Header, Opcode, MAX_CONTROL, MAX_HEADER};

/// Largest payload sent in one frame. jupyter-server-proxy reads at most 256 KiB per message and
/// tornado rejects messages over 10 MiB; 256 KiB keeps every hop happy.
pub const MAX_SEND: usize = 256 * 1024;

/// Most bytes read from the transport at once.
const READ_MAX: usize = 256 * 1024;

/// Read size while reads do not fill it: an idle session waits on a small buffer.
const READ_SMALL: usize = 16 * 1024;

/// How long after its last big read a stream gives its big read buffer back (the pump's buffer
/// for local input follows the same rule). Reads around 16 KiB (a TLS record each) flip the
/// read size often during a transfer; the buffer must outlive that.
pub(crate) const KEEP_BIG_BUFFER: Duration = Duration::from_secs(2);

/// Writes up to this size are gathered in the write buffer (header and payload together) and go
/// out at the next flush; larger ones are written at once.
const SMALL_WRITE: usize = 16 * 1024;

/// Close codes (RFC 6455 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Which end of the handshake we are: clients mask what they send, servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// How the read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer sent a Close frame (code 1005 when it carried none).
    Closed { code: u16, reason: String },
    /// The transport ended without a Close frame.
    Lost,
}

/// Pings sent while the peer is quiet, and how long silence may last before the connection is
/// declared dead. Any frame received counts as an answer.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
    pub missed: u32,
}

struct Pinger {
    ticks: Interval,
    /// Intervals in a row without a byte from the peer, and how many make it dead.
    missed: u32,
    max_missed: u32,
    limit: Duration,
}

/// The payload still to come of the data frame being read.
struct Incoming {
    left: u64,
    mask: Option<[u8; 4]>,
    offset: usize,
}

pub struct WsStream<S> {
    io: S,
    role: Role,
    max_message: u64,
    /// Bytes read and not yet handed out; the first `ready` of them are unmasked payload.
    rbuf: BytesMut,
    ready: usize,
    incoming: Option<Incoming>,
    read_size: usize,
    /// When a read last filled a small read (bytes in bulk).
    last_big_read: Instant,
    /// Length so far of the message being read, and whether continuation frames may follow.
    message_len: u64,
    in_message: bool,
    read_end: Option<ReadEnd>,
    /// Whether the peer sent anything since the last keepalive tick.
    received: bool,
    pinger: Option<Pinger>,
    /// Frames (or their tails) waiting to be written, in order.
    wbuf: BytesMut,
    /// Control frames waiting for what is queued to go out: the answer to the peer's latest
    /// ping (one pong, however many pings came: RFC 6455 5.5.3), our keepalive ping, our Close.
    pong: Option<Vec<u8>>,
    ping_due: bool,
    control: BytesMut,
    /// Payload bytes still owed to the data frame being written.
    frame_left: usize,
    close_sent: bool,
    rng: Option<rand::rngs::StdRng>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S> WsStream<S> {
    /// A WebSocket over `io` whose handshake is done; `read_ahead` holds bytes the handshake read
    /// past its end. Messages over `max_message` bytes end the connection (code 1009).
    pub fn new(io: S, role: Role, read_ahead: &[u8], max_message: usize) -> Self {
        let mut rbuf = BytesMut::with_capacity(READ_SMALL.max(read_ahead.len()));
        rbuf.extend_from_slice(read_ahead);
        WsStream {
            io,
            role,
            max_message: max_message as u64,
            rbuf,
            ready: 0,
            incoming: None,
            read_size: READ_SMALL,
            last_big_read: Instant::now(),
            message_len: 0,
            in_message: false,
            read_end: None,
            received: false,
            pinger: None,
            wbuf: BytesMut::new(),
            pong: None,
            ping_due: false,
            control: BytesMut::new(),
            frame_left: 0,
            close_sent: false,
            rng: (role == Role::Client).then(rand::rngs::StdRng::from_os_rng),
        }
    }

    /// Sends pings while the peer is quiet and fails reading with `TimedOut` once it has been
    /// silent for `missed` intervals. Must be called within a tokio runtime.
    pub fn set_keepalive(&mut self, keepalive: Keepalive) {
        let mut ticks =
            tokio::time::interval_at(Instant::now() + keepalive.interval, keepalive.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.pinger = Some(Pinger {
            ticks,
            missed: 0,
            max_missed: keepalive.missed,
            limit: keepalive.interval * keepalive.missed,
        });
    }

    /// How reading ended, once it has.
    pub fn read_end(&self) -> Option<&ReadEnd> {
        self.read_end.as_ref()
    }

    fn mask_key(&mut self) -> Option<[u8; 4]> {
        self.rng.as_mut().map(|rng| rng.random())
    }

    /// Appends a whole frame to the write queue (or the control queue), masked if we are the
    /// client.
    fn put_frame(&mut self, opcode: Opcode, payload: &[u8], to_control: bool) {
        let mask = self.mask_key();
        let header = Header {
            fin: true,
            opcode,
            mask,
            len: payload.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER];
        let n = header.encode(&mut head);
        let out = if to_control {
            &mut self.control
        } else {
            &mut self.wbuf
        };
        out.extend_from_slice(&head[..n]);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            frame::apply_mask(&mut out[start..], key, 0);
        }
    }

    /// Queues our Close (once).
    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let mut payload = code.to_be_bytes().to_vec();
        let reason = reason.as_bytes();
        payload.extend_from_slice(&reason[..reason.len().min(MAX_CONTROL - 2)]);
        self.put_frame(Opcode::Close, &payload, true);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes out queued frames. Control frames join the queue between data frames, once what
    /// was queued before has gone out: a peer that pings and never reads gets one pong for its
    /// latest ping, and our memory does not grow.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.frame_left == 0 && self.wbuf.is_empty() {
                if let Some(payload) = self.pong.take() {
                    self.put_frame(Opcode::Pong, &payload, false);
                }
                if std::mem::take(&mut self.ping_due) {
                    self.put_frame(Opcode::Ping, b"", false);
                }
                // Copied rather than unsplit: unsplit into an empty buffer would swap in the
                // control queue's (small) allocation and free the big one, so that every data
                // frame after it would allocate, fault in and zero a fresh buffer.
                if !self.control.is_empty() {
                    self.wbuf.extend_from_slice(&self.control);
                    self.control.clear();
                }
            }
            if self.wbuf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
    }

    /// At each keepalive tick: a ping, or the end once the peer has been silent for the allowed
    /// number of intervals in a row. Called only while waiting for the peer with nothing left
    /// to read, so time we spent not reading (our output stalled) is never the peer's fault.
    /// `Ok(true)` when a ping was queued.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let Some(pinger) = self.pinger.as_mut() else {
            return Ok(false);
        };
        let mut due = false;
        while pinger.ticks.poll_tick(cx).is_ready() {
            due = true;
        }
        if !due || self.close_sent {
            return Ok(false);
        }
        pinger.missed = if std::mem::take(&mut self.received) {
            0
        } else {
            pinger.missed + 1
        };
        if pinger.missed >= pinger.max_missed {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer for {} s", pinger.limit.as_secs()),
            ));
        }
        self.ping_due = true;
        Ok(true)
    }

    /// Acts on a whole control frame at the head of `rbuf`.
    fn handle_control(&mut self, header: Header, header_len: usize) {
        let len = header.len as usize;
        let mut payload = [0u8; MAX_CONTROL];
        let payload = &mut payload[..len];
        payload.copy_from_slice(&self.rbuf[header_len..header_len + len]);
        if let Some(key) = header.mask {
            frame::apply_mask(payload, key, 0);
        }
        self.rbuf.advance(header_len + len);
        match header.opcode {
            Opcode::Ping if !self.close_sent => self.pong = Some(payload.to_vec()),
            Opcode::Close => {
                let (code, reason, coded) = match *payload {
                    [a, b, ref rest @ ..] => (u16::from_be_bytes([a, b]), rest, true),
                    _ => (1005, &[][..], false),
                };
                // Echo the code, as RFC 6455 5.5.1 asks, if it is one that may be sent (1005,
                // "none given", may not: sent, it is a protocol error); a reason that is not
                // UTF-8 is invalid data (7.4.1).
                let echo = match code {
                    _ if !coded => CLOSE_NORMAL,
                    _ if std::str::from_utf8(reason).is_err() => CLOSE_INVALID_DATA,
                    1000..=1003 | 1007..=1014 | 3000..=4999 => code,
                    _ => CLOSE_PROTOCOL,
                };
                let reason = String::from_utf8_lossy(reason).into_owned();
                self.queue_close(echo, "");
                // A 1005 that was sent is the peer's protocol error, not "no code": say so.
                let code = if coded && code == 1005 {
                    CLOSE_PROTOCOL
                } else {
                    code
                };
                self.read_end = Some(ReadEnd::Closed { code, reason });
            }
            _ => {}
        }
    }

    /// Ends the connection for a protocol error: our Close goes out with `code`.
    fn fail(&mut self, cx: &mut Context<'_>, code: u16, msg: String) -> io::Error {
        self.queue_close(code, "");
        let _ = self.poll_drain(cx);
        self.read_end = Some(ReadEnd::Lost);
        invalid(msg)
    }

    /// Reads the next header from `rbuf`, acting on control frames; `Ok(false)` when `rbuf` does
    /// not hold a whole header (or a whole control frame) yet.
    fn next_header(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let (header, header_len) = match Header::parse(&self.rbuf) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(false),
            Err(e) => {
                return Err(self.fail(cx, CLOSE_PROTOCOL, format!("websocket protocol error: {e}")))
            }
        };
        let masked = header.mask.is_some();
        if masked != (self.role == Role::Server) {
            let what = if masked { "a masked" } else { "an unmasked" };
            return Err(self.fail(
                cx,
                CLOSE_PROTOCOL,
                format!("websocket protocol error: {what} frame from the peer"),
            ));
        }
        if header.opcode.is_control() {
            if self.rbuf.len() < header_len + header.len as usize {
                return Ok(false);
            }
            if header.opcode == Opcode::Close && header.len == 1 {
                return Err(self.fail(
                    cx,
                    CLOSE_PROTOCOL,
                    "websocket protocol error: a close frame with a 1-byte payload".into(),
                ));
            }
            self.handle_control(header, header_len);
            return Ok(true);
        }
        let continuation = header.opcode == Opcode::Continuation;
        if continuation != self.in_message {
            return Err(self.fail(
                cx,
                CLOSE_PROTOCOL,
                "websocket protocol error: a data frame out of sequence".into(),
            ));
        }
        self.message_len = if continuation {
            self.message_len + header.len
        } else {
            header.len
        };
        if self.message_len > self.max_message {
            return Err(self.fail(
                cx,
                CLOSE_TOO_BIG,
                format!(
                    "the peer sent a message of over {} MiB, the limit",
                    self.max_message >> 20
                ),
            ));
        }
        self.in_message = !header.fin;
        self.rbuf.advance(header_len);
        if header.len > 0 {
            self.incoming = Some(Incoming {
                left: header.len,
                mask: header.mask,
                offset: 0,
            });
        }
        Ok(true)
    }

    /// Reads more from the transport into `rbuf`; `Ok(false)` at its end.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Room for a read and the partial header or control frame before it, so the buffer is
        // reused rather than grown.
        let wanted = self.read_size + MAX_HEADER + MAX_CONTROL;
        self.rbuf.reserve(wanted);
        if self.read_size == READ_SMALL
            && self.rbuf.capacity() > 4 * wanted
            && self.last_big_read.elapsed() > KEEP_BIG_BUFFER
        {
            // The burst is long over: give its big buffer back, so an idle session keeps a
            // small one. What it holds is at most a partial header or control frame.
            let mut small = BytesMut::with_capacity(wanted + self.rbuf.len());
            small.extend_from_slice(&self.rbuf);
            self.rbuf = small;
        }
        let before = self.rbuf.len();
        let room = self.rbuf.capacity() - before;
        let mut limited = (&mut self.rbuf).limit(room.min(self.read_size));
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut limited
        ))?;
        // Any byte from the peer says it is alive, even the middle of a slow frame.
        self.received |= n > 0;
        // Big reads while bytes come in bulk; back to small ones only when they trickle. Dropping
        // to small at every read short of full made a download alternate 256 KiB and 16 KiB
        // reads, twice the wake-ups.
        if n >= READ_SMALL {
            self.last_big_read = Instant::now();
        }
        if n >= self.read_size {
            self.read_size = READ_MAX;
        } else if n < READ_SMALL {
            self.read_size = READ_SMALL;
        }
        Poll::Ready(Ok(n > 0))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for WsStream<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.ready == 0 && this.read_end.is_none() {
            // Pongs, pings and the close echo go out whenever we are asked for input.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if let Some(incoming) = this.incoming.as_mut() {
                if !this.rbuf.is_empty() {
                    let n = (this.rbuf.len() as u64).min(incoming.left) as usize;
                    if let Some(key) = incoming.mask {
                        frame::apply_mask(&mut this.rbuf[..n], key, incoming.offset);
                    }
                    incoming.offset += n;
                    incoming.left -= n as u64;
                    if incoming.left == 0 {
                        this.incoming = None;
                    }
                    this.ready = n;
                    continue;
                }
            } else if this.next_header(cx)? {
                continue;
            }
            match this.poll_read_more(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => this.read_end = Some(ReadEnd::Lost),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.poll_keepalive(cx)? {
                        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
        if this.read_end.is_some() {
            // The close echo, if any; the peer may already be gone.
            let _ = this.poll_drain(cx);
        }
        Poll::Ready(Ok(&this.rbuf[..this.ready]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let amt = amt.min(this.ready);
        this.rbuf.advance(amt);
        this.ready -= amt;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        crate::pump::read_from_buf(self, cx, buf)
    }
}

/// Writes `a` then `b` with one vectored write where the transport takes one.
fn poll_write_two<S: AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    a: &[u8],
    b: &[u8],
) -> Poll<io::Result<usize>> {
    if io.is_write_vectored() {
        let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
        Pin::new(io).poll_write_vectored(cx, &bufs)
    } else {
        Pin::new(io).poll_write(cx, a)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // The rest of a frame whose header is out: the caller's next bytes are its payload.
        if this.frame_left > 0 {
            ready!(this.poll_drain(cx))?;
            let n = buf.len().min(this.frame_left);
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..n]))?;
            this.frame_left -= n;
            return Poll::Ready(Ok(n));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the websocket is closing",
            )));
        }
        let n = buf.len().min(MAX_SEND);
        let payload = &buf[..n];
        if n <= SMALL_WRITE && this.wbuf.len() < READ_MAX {
            this.put_frame(Opcode::Binary, payload, false);
            return Poll::Ready(Ok(n));
        }
        ready!(this.poll_drain(cx))?;
        let mask = this.mask_key();
        let header = Header {
            fin: true,
            opcode: Opcode::Binary,
            mask,
            len: n as u64,
        };
        let mut head = [0u8; MAX_HEADER];
        let head_len = header.encode(&mut head);
        if let Some(key) = mask {
            // A client's payload must be masked: copy it masked behind the header, in one pass.
            this.wbuf.extend_from_slice(&head[..head_len]);
            let start = this.wbuf.len();
            this.wbuf.resize(start + n, 0);
            frame::copy_masked(&mut this.wbuf[start..], payload, key, 0);
            let _ = this.poll_drain(cx)?;
            return Poll::Ready(Ok(n));
        }
        let written = ready!(poll_write_two(&mut this.io, cx, &head[..head_len], payload))?;
        if written < head_len {
            // Rare (the transport took part of 14 bytes): the frame's header goes out first.
            this.wbuf.extend_from_slice(&head[written..head_len]);
            this.frame_left = n;
            ready!(this.poll_drain(cx))?;
            let k = ready!(Pin::new(&mut this.io).poll_write(cx, payload))?;
            this.frame_left -= k;
            return Poll::Ready(Ok(k));
        }
        let sent = written - head_len;
        this.frame_left = n - sent;
        if sent > 0 {
            return Poll::Ready(Ok(sent));
        }
        // Only the header went out (a transport without vectored writes): now the payload.
        let k = ready!(Pin::new(&mut this.io).poll_write(cx, payload))?;
        this.frame_left -= k;
        Poll::Ready(Ok(k))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends our Close (the peer answers with its own, which ends reading). The transport itself
    /// stays open for that answer; dropping the stream closes it. A caller that stops in the
    /// middle of a frame's payload (the pump never does) gets no Close: none may follow a frame
    /// cut short, so only what was queued is flushed.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.frame_left == 0 {
            this.queue_close(CLOSE_NORMAL, "");
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::{self, frame::coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    const LIMIT: usize = 4 << 20;

    /// Ours in `role` against tungstenite in the other role, over a pipe of `capacity` bytes.
    async fn pair(
        role: Role,
        capacity: usize,
    ) -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(capacity);
        let theirs = match role {
            Role::Server => protocol::Role::Client,
            Role::Client => protocol::Role::Server,
        };
        let peer = WebSocketStream::from_raw_socket(b, theirs, None).await;
        (WsStream::new(a, role, b"", LIMIT), peer)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Everything the peer receives until it sees a Close: the bytes, and the Close.
    async fn drain_peer(peer: &mut WebSocketStream<DuplexStream>) -> (Vec<u8>, Option<CloseFrame>) {
        let mut got = Vec::new();
        while let Some(msg) = peer.next().await {
            match msg.unwrap() {
                Message::Binary(d) => got.extend_from_slice(&d),
                Message::Close(f) => return (got, f),
                _ => {}
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn both_roles_carry_bytes_both_ways_and_close_cleanly() {
        for role in [Role::Server, Role::Client] {
            // A small pipe makes big writes partial: frames must still come out whole.
            let (mut ours, mut peer) = pair(role, 4096).await;
            let big = pattern(MAX_SEND * 2 + 77);
            let sent = big.clone();
            let peer_side = tokio::spawn(async move {
                peer.send(Message::binary(b"abc".to_vec())).await.unwrap();
                peer.send(Message::text("def")).await.unwrap();
                peer.send(Message::Ping(b"hi".to_vec().into()))
                    .await
                    .unwrap();
                peer.send(Message::binary(pattern(1 << 20))).await.unwrap();
                let (got, close) = drain_peer(&mut peer).await;
                assert!(got == sent, "the peer got every byte, in order");
                assert_eq!(close.unwrap().code, CloseCode::Normal);
                // tungstenite answered our Close; flush its answer.
                peer.flush().await.unwrap();
                peer
            });
            let mut got = vec![0u8; 6 + (1 << 20)];
            ours.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[..6], b"abcdef", "{role:?}");
            assert!(got[6..] == pattern(1 << 20), "{role:?}");
            ours.write_all(&big).await.unwrap();
            ours.write_all(b"").await.unwrap();
            ours.shutdown().await.unwrap();
            let mut rest = Vec::new();
            ours.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            assert_eq!(
                ours.read_end(),
                Some(&ReadEnd::Closed {
                    code: 1000,
                    reason: String::new()
                }),
                "{role:?}"
            );
            let mut peer = peer_side.await.unwrap();
            drop(ours);
            assert!(
                peer.next().await.is_none_or(|m| m.is_err()),
                "nothing after the close"
            );
        }
    }

    #[tokio::test]
    async fn fragmented_messages_and_small_writes() {
        let (mut ours, mut peer) = pair(Role::Server, 1 << 20).await;
        let frag = |opcode, fin, data: &[u8]| {
            // tungstenite masks it, as a client does.
            Message::Frame(protocol::frame::Frame::message(data.to_vec(), opcode, fin))
        };
        use protocol::frame::coding::{Data, OpCode};
        peer.send(frag(OpCode::Data(Data::Binary), false, b"one "))
            .await
            .unwrap();
        peer.send(Message::Ping(Vec::new().into())).await.unwrap();
        peer.send(frag(OpCode::Data(Data::Continue), false, b"two "))
            .await
            .unwrap();
        peer.send(frag(OpCode::Data(Data::Continue), true, b"three"))
            .await
            .unwrap();
        let mut got = [0u8; 13];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
        for chunk in [&b"x"[..], b"yz", b"!"] {
            ours.write_all(chunk).await.unwrap();
        }
        ours.flush().await.unwrap();
        let mut msgs = Vec::new();
        while msgs.len() < 4 {
            msgs.push(peer.next().await.unwrap().unwrap());
        }
        assert!(matches!(msgs[0], Message::Pong(_)), "{msgs:?}");
        assert_eq!(
            msgs[1..],
            [
                Message::binary(b"x".to_vec()),
                Message::binary(b"yz".to_vec()),
                Message::binary(b"!".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn a_peer_that_breaks_the_protocol_gets_a_close_and_an_error() {
        // An unmasked frame to a server.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ours = WsStream::new(a, Role::Server, b"", LIMIT);
        b.write_all(&[0x82, 0x03, b'a', b'b', b'c']).await.unwrap();
        let err = ours.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("unmasked"), "{err}");
        let mut close = [0u8; 4];
        b.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xEA], "close 1002");

        // A message over the limit, refused from its header alone.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ours = WsStream::new(a, Role::Server, b"", LIMIT);
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(LIMIT as u64 + 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        b.write_all(&header).await.unwrap();
        let err = ours.read_u8().await.unwrap_err();
        assert!(err.to_string().contains("over 4 MiB"), "{err}");
        b.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xF1], "close 1009");

        // A Close whose reason is not UTF-8: the echo says 1007, reading ends with the close.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ours = WsStream::new(a, Role::Server, b"", LIMIT);
        b.write_all(&[0x88, 0x83, 0, 0, 0, 0, 0x03, 0xE8, 0xFF])
            .await
            .unwrap();
        assert_eq!(
            ours.read_u8().await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(
            matches!(ours.read_end(), Some(ReadEnd::Closed { code: 1000, .. })),
            "{:?}",
            ours.read_end()
        );
        b.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xEF], "close 1007");

        // A Close that says 1005 ("no code", which no frame may carry) is a protocol error;
        // one with no code at all is answered as normal.
        for (sent, echo, read) in [
            (&[0x03, 0xED][..], [0x03, 0xEA], CLOSE_PROTOCOL),
            (&[][..], [0x03, 0xE8], 1005),
        ] {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut ours = WsStream::new(a, Role::Server, b"", LIMIT);
            let mut frame = vec![0x88, 0x80 | sent.len() as u8, 0, 0, 0, 0];
            frame.extend_from_slice(sent);
            b.write_all(&frame).await.unwrap();
            let _ = ours.read_u8().await;
            b.read_exact(&mut close).await.unwrap();
            assert_eq!(close[2..], echo, "the echo of a Close carrying {sent:?}");
            let Some(ReadEnd::Closed { code, .. }) = ours.read_end() else {
                panic!("reading did not end with the Close");
            };
            assert_eq!(*code, read, "the Close as read, {sent:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_buffer_shrinks_back_when_a_burst_is_long_over() {
        let (mut ours, mut peer) = pair(Role::Server, 1 << 20).await;
        peer.send(Message::binary(pattern(512 << 10)))
            .await
            .unwrap();
        let mut got = vec![0u8; 512 << 10];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(ours.read_size, READ_MAX, "big reads for a burst");
        let mut two = [0u8; 2];
        let mut small_message = async |msg: &[u8; 2]| {
            peer.send(Message::binary(msg.to_vec())).await.unwrap();
            ours.read_exact(&mut two).await.unwrap();
            assert_eq!(&two, msg);
            ours.rbuf.capacity()
        };
        // Small reads right after the burst keep the big buffer (a transfer may go on)...
        small_message(b"ab").await;
        assert!(
            small_message(b"cd").await > READ_MAX / 2,
            "kept during the burst"
        );
        // ...and give it back once the burst is long over.
        tokio::time::advance(KEEP_BIG_BUFFER * 2).await;
        small_message(b"ef").await;
        let capacity = small_message(b"gh").await;
        let small = READ_SMALL + MAX_HEADER + MAX_CONTROL;
        assert!(
            capacity <= 4 * small,
            "an idle stream keeps {capacity} bytes"
        );
    }

    #[tokio::test]
    async fn a_vanished_peer_is_an_end_without_close() {
        let (mut ours, peer) = pair(Role::Client, 1024).await;
        drop(peer);
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert_eq!(ours.read_end(), Some(&ReadEnd::Lost));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_on_time_and_declares_a_silent_peer_dead() {
        let (mut ours, mut peer) = pair(Role::Client, 1024).await;
        ours.set_keepalive(Keepalive {
            interval: Duration::from_secs(30),
            missed: 3,
        });
        let started = tokio::time::Instant::now();
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let err = ours.read_exact(&mut byte).await.unwrap_err();
            (err, tokio::time::Instant::now())
        });
        // The first ping leaves at the first interval; the peer reads it and answers nothing.
        assert!(matches!(
            peer.next().await.unwrap().unwrap(),
            Message::Ping(_)
        ));
        assert_eq!(started.elapsed().as_secs(), 30);
        let (err, at) = reader.await.unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "no answer for 90 s");
        assert_eq!((at - started).as_secs(), 90);
    }

    #[tokio::test]
    async fn a_peer_that_pings_and_never_reads_gets_one_pong_not_a_queue() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut ours = WsStream::new(a, Role::Server, b"", LIMIT);
        let flood = tokio::spawn(async move {
            let mut ping = vec![0x89, 0x80 | MAX_CONTROL as u8, 0, 0, 0, 0];
            ping.extend_from_slice(&[b'p'; MAX_CONTROL]);
            for _ in 0..2000 {
                b.write_all(&ping).await.unwrap();
            }
            b
        });
        // Nothing but pings: reading waits, answering what it can.
        let waited = tokio::time::timeout(Duration::from_secs(1), ours.read_u8()).await;
        assert!(waited.is_err(), "no data arrives");
        let _b = flood.await.unwrap();
        assert!(
            ours.wbuf.len() <= MAX_HEADER + MAX_CONTROL,
            "{} bytes queued",
            ours.wbuf.len()
        );
    }
}
