//! The byte pump between a tunnel and a local pair: ssh's stdin and stdout for hubssh, sshd's
//! pipes for hubsshd. Tunnel bytes go out from the tunnel's own buffer (no copy); local bytes
//! are read into one buffer and written from it.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

// A burst of local input counts as over as long after its last big read as a WebSocket's does.
use crate::ws::KEEP_BIG_BUFFER;

/// Most bytes read from the local input at once (one WebSocket message of 256 KiB at most).
pub const LOCAL_READ: usize = 256 * 1024;

/// Local reads start at this size; one that fills it switches to [`LOCAL_READ`] for the burst.
const LOCAL_READ_SMALL: usize = 16 * 1024;

/// Steps one direction takes before letting the other (and the rest of the runtime) run.
const BUDGET: usize = 32;

/// Once local output has failed (its process is gone), how long local input may still take to
/// end: what it has left may be that process's last words, sshd's disconnect message.
const OUTPUT_GONE_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default)]
pub struct PumpOptions {
    /// After local input ends (and the tunnel was shut down), how long the tunnel may go on
    /// delivering; `None` waits for its end.
    pub linger: Option<Duration>,
    /// End as soon as the tunnel's read side ends, without waiting for local input to end.
    pub end_with_tunnel: bool,
}

/// Which side failed.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("{0}")]
    Tunnel(io::Error),
    #[error("reading local input: {0}")]
    Input(io::Error),
    #[error("writing local output: {0}")]
    Output(io::Error),
}

/// What moved, and which side ended first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pumped {
    pub to_tunnel: u64,
    pub from_tunnel: u64,
    /// Local input ended before the tunnel's read side did.
    pub input_ended_first: bool,
}

/// Local input to the tunnel.
struct Outbound {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    need_flush: bool,
    done: bool,
    /// When a read last took [`LOCAL_READ_SMALL`] bytes or more.
    last_big_read: Instant,
    /// The last read filled the small buffer: the next one gets the big one.
    filled: bool,
}

impl Outbound {
    fn new() -> Self {
        Outbound {
            buf: vec![0u8; LOCAL_READ_SMALL].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            need_flush: false,
            done: false,
            last_big_read: Instant::now(),
            filled: false,
        }
    }

    /// Before a read (the buffer is empty): big while bytes come in bulk, small once the burst
    /// is long over (the next read after that: an idle session's keepalive at the latest). Shrinking only then keeps a transfer from alternating big and small reads.
    fn size_buffer(&mut self) {
        let big = self.buf.len() == LOCAL_READ;
        if !big && std::mem::take(&mut self.filled) {
            self.buf = vec![0u8; LOCAL_READ].into_boxed_slice();
        } else if big && self.last_big_read.elapsed() > KEEP_BIG_BUFFER {
            self.buf = vec![0u8; LOCAL_READ_SMALL].into_boxed_slice();
        }
    }

    fn poll<T, R>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut T,
        input: &mut R,
        moved: &mut u64,
    ) -> Poll<Result<(), PumpError>>
    where
        T: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        for _ in 0..BUDGET {
            if self.pos == self.cap && !self.eof {
                self.size_buffer();
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *input).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *tunnel).poll_flush(cx))
                                .map_err(PumpError::Tunnel)?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Input(e))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n >= LOCAL_READ_SMALL {
                            self.last_big_read = Instant::now();
                        }
                        self.filled = n == LOCAL_READ_SMALL && self.buf.len() == LOCAL_READ_SMALL;
                        self.eof = n == 0;
                        self.pos = 0;
                        self.cap = n;
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *tunnel).poll_write(cx, &self.buf[self.pos..self.cap]))
                        .map_err(PumpError::Tunnel)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Tunnel(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                *moved += n as u64;
                self.need_flush = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *tunnel).poll_shutdown(cx)).map_err(PumpError::Tunnel)?;
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The tunnel to local output.
#[derive(Default)]
struct Inbound {
    need_flush: bool,
    done: bool,
}

impl Inbound {
    fn poll<T, W>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut T,
        output: &mut W,
        moved: &mut u64,
    ) -> Poll<Result<(), PumpError>>
    where
        T: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..BUDGET {
            let data = match Pin::new(&mut *tunnel).poll_fill_buf(cx) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *output).poll_flush(cx)).map_err(PumpError::Output)?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Tunnel(e))),
                Poll::Ready(Ok(data)) => data,
            };
            if data.is_empty() {
                ready!(Pin::new(&mut *output).poll_shutdown(cx)).map_err(PumpError::Output)?;
                return Poll::Ready(Ok(()));
            }
            let n =
                ready!(Pin::new(&mut *output).poll_write(cx, data)).map_err(PumpError::Output)?;
            if n == 0 {
                return Poll::Ready(Err(PumpError::Output(io::ErrorKind::WriteZero.into())));
            }
            Pin::new(&mut *tunnel).consume(n);
            *moved += n as u64;
            self.need_flush = true;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `AsyncRead::poll_read` for a type that has its bytes in its own buffer (`AsyncBufRead`).
pub fn read_from_buf<T: AsyncBufRead + ?Sized>(
    mut this: Pin<&mut T>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let data = ready!(this.as_mut().poll_fill_buf(cx))?;
    let n = data.len().min(buf.remaining());
    buf.put_slice(&data[..n]);
    this.consume(n);
    Poll::Ready(Ok(()))
}

/// Moves bytes both ways until both directions end (or as `opts` says). At local input's end
/// the tunnel is shut down (a WebSocket sends its Close); at the tunnel's end the local output
/// is shut down. When local output fails, local input still goes to the tunnel until it ends
/// (within [`OUTPUT_GONE_DRAIN`]), then the output's error is returned.
///
/// # Errors
/// The first failure of either direction, naming its side.
pub async fn pump<T, R, W>(
    tunnel: &mut T,
    input: &mut R,
    output: &mut W,
    opts: PumpOptions,
) -> Result<Pumped, PumpError>
where
    T: AsyncBufRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Outbound::new();
    let mut inb = Inbound::default();
    let mut pumped = Pumped::default();
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut output_gone: Option<(io::Error, Pin<Box<tokio::time::Sleep>>)> = None;
    poll_fn(|cx| {
        if !out.done {
            if let Poll::Ready(r) = out.poll(cx, tunnel, input, &mut pumped.to_tunnel) {
                r?;
                out.done = true;
                pumped.input_ended_first = !inb.done;
                linger = opts.linger.map(|d| Box::pin(tokio::time::sleep(d)));
            }
        }
        if !inb.done {
            match inb.poll(cx, tunnel, output, &mut pumped.from_tunnel) {
                Poll::Ready(Err(PumpError::Output(e))) => {
                    inb.done = true;
                    output_gone = Some((e, Box::pin(tokio::time::sleep(OUTPUT_GONE_DRAIN))));
                }
                Poll::Ready(r) => {
                    r?;
                    inb.done = true;
                }
                Poll::Pending => {}
            }
        }
        if let Some((_, drain)) = &mut output_gone {
            if out.done || drain.as_mut().poll(cx).is_ready() {
                let (e, _) = output_gone.take().expect("just seen");
                return Poll::Ready(Err(PumpError::Output(e)));
            }
            return Poll::Pending;
        }
        let ended = (inb.done && (out.done || opts.end_with_tunnel))
            || linger
                .as_mut()
                .is_some_and(|l| l.as_mut().poll(cx).is_ready());
        if ended {
            Poll::Ready(Ok(pumped))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

    #[tokio::test]
    async fn moves_both_ways_and_shuts_each_side_down() {
        let (tunnel_near, tunnel_far) = tokio::io::duplex(64 * 1024);
        let (mut input_far, mut input) = tokio::io::duplex(64 * 1024);
        let (mut output, mut output_far) = tokio::io::duplex(64 * 1024);
        let mut tunnel = BufReader::new(tunnel_near);
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let far = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(tunnel_far);
            let send = async {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.unwrap();
            assert!(got == up2, "the tunnel got what input had");
        });
        let local = tokio::spawn(async move {
            let send = async {
                input_far.write_all(&up).await.unwrap();
                input_far.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = output_far.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.unwrap();
            assert!(got == down, "output got what the tunnel had");
        });
        let pumped = pump(&mut tunnel, &mut input, &mut output, PumpOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (pumped.to_tunnel, pumped.from_tunnel),
            (3_000_000, 2_000_000)
        );
        far.await.unwrap();
        local.await.unwrap();
    }

    #[tokio::test]
    async fn ends_with_the_tunnel_when_asked() {
        let (tunnel_near, tunnel_far) = tokio::io::duplex(1024);
        let (_input_far, mut input) = tokio::io::duplex(1024);
        let (mut output, _output_far) = tokio::io::duplex(1024);
        drop(tunnel_far);
        let mut tunnel = BufReader::new(tunnel_near);
        let opts = PumpOptions {
            end_with_tunnel: true,
            ..Default::default()
        };
        let pumped = pump(&mut tunnel, &mut input, &mut output, opts)
            .await
            .unwrap();
        assert!(!pumped.input_ended_first);
    }

    /// One poll of `out`, moving what `input` has into `tunnel`.
    fn step<T, R>(out: &mut Outbound, tunnel: &mut T, input: &mut R)
    where
        T: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut moved = 0;
        let polled = out.poll(&mut cx, tunnel, input, &mut moved);
        assert!(polled.is_pending(), "input has not ended");
    }

    #[tokio::test(start_paused = true)]
    async fn the_input_buffer_grows_for_a_burst_and_shrinks_once_it_is_long_over() {
        let (mut tunnel, mut tunnel_far) = tokio::io::duplex(1 << 20);
        let (mut input_far, mut input) = tokio::io::duplex(1 << 20);
        let mut out = Outbound::new();
        assert_eq!(
            out.buf.len(),
            LOCAL_READ_SMALL,
            "a new session starts small"
        );
        let burst: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        input_far.write_all(&burst).await.unwrap();
        step(&mut out, &mut tunnel, &mut input);
        assert_eq!(out.buf.len(), LOCAL_READ, "a read that fills it grows it");
        // Small reads right after the burst keep the big buffer (a transfer may go on)...
        input_far.write_all(b"ab").await.unwrap();
        step(&mut out, &mut tunnel, &mut input);
        assert_eq!(out.buf.len(), LOCAL_READ, "kept during the burst");
        // ...and give it back once the burst is long over.
        tokio::time::advance(KEEP_BIG_BUFFER * 2).await;
        input_far.write_all(b"cd").await.unwrap();
        step(&mut out, &mut tunnel, &mut input);
        assert_eq!(
            out.buf.len(),
            LOCAL_READ_SMALL,
            "given back at the next read"
        );
        // A read that just fills the small buffer grows it, and polls with nothing to read
        // neither toggle it nor, once that read is long past, keep it.
        let exact = vec![7u8; LOCAL_READ_SMALL];
        input_far.write_all(&exact).await.unwrap();
        step(&mut out, &mut tunnel, &mut input);
        step(&mut out, &mut tunnel, &mut input);
        assert_eq!(out.buf.len(), LOCAL_READ, "grown for what may be a burst");
        tokio::time::advance(KEEP_BIG_BUFFER * 2).await;
        for _ in 0..3 {
            step(&mut out, &mut tunnel, &mut input);
            assert_eq!(out.buf.len(), LOCAL_READ_SMALL, "small, and it stays so");
        }
        let mut got = vec![0u8; burst.len() + 4 + exact.len()];
        tunnel_far.read_exact(&mut got).await.unwrap();
        let (head, tail) = got.split_at(burst.len());
        assert!(head == burst && &tail[..4] == b"abcd" && tail[4..] == exact[..]);
    }

    /// Local output that has gone (a process that exited): every write fails.
    struct Gone;

    impl AsyncWrite for Gone {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn local_input_s_last_words_still_go_out_after_local_output_failed() {
        let (tunnel_near, mut tunnel_far) = tokio::io::duplex(1024);
        let (mut input_far, mut input) = tokio::io::duplex(1024);
        let mut tunnel = BufReader::new(tunnel_near);
        // The client sends on; the local side (sshd, exited) can no longer take it...
        tunnel_far.write_all(b"more for sshd").await.unwrap();
        let words = tokio::spawn(async move {
            tokio::task::yield_now().await;
            // ...but its last output is still on its way.
            input_far.write_all(b"disconnect: bye").await.unwrap();
            drop(input_far);
            let mut got = Vec::new();
            tunnel_far.read_to_end(&mut got).await.unwrap();
            got
        });
        let pumped = pump(&mut tunnel, &mut input, &mut Gone, PumpOptions::default()).await;
        assert!(matches!(pumped, Err(PumpError::Output(_))), "{pumped:?}");
        drop(tunnel);
        assert_eq!(words.await.unwrap(), b"disconnect: bye");
    }

    #[tokio::test(start_paused = true)]
    async fn lingers_after_input_ends_then_stops() {
        let (tunnel_near, _tunnel_far) = tokio::io::duplex(1024);
        let (input_far, mut input) = tokio::io::duplex(1024);
        let (mut output, _output_far) = tokio::io::duplex(1024);
        drop(input_far);
        let mut tunnel = BufReader::new(tunnel_near);
        let opts = PumpOptions {
            linger: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        let pumped = pump(&mut tunnel, &mut input, &mut output, opts)
            .await
            .unwrap();
        assert!(pumped.input_ended_first);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
