//! Tells what a new connection speaks from its first bytes: HTTP (a WebSocket upgrade or a status
//! request), raw SSH (what jupyter-server-proxy's `raw_socket_proxy` forwards), an empty readiness
//! probe, or something else.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a client may take to send its first bytes. OpenSSH clients send their version line
/// at once, and so does any HTTP client; a silent peer is a stuck or hostile one.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes needed to tell the dialects apart (`GET `, `SSH-`).
const SNIFF_LEN: usize = 4;

#[derive(Debug, PartialEq, Eq)]
pub enum Dialect {
    /// An HTTP request; the bytes read so far.
    Http(Bytes),
    /// An SSH version exchange; the bytes read so far.
    Ssh(Bytes),
    /// The peer closed without sending anything (jupyter-server-proxy's readiness check).
    Probe,
    /// Anything else, with the bytes that gave it away.
    Unknown(Bytes),
}

/// Reads just enough of `stream` to name its dialect. The bytes read are returned inside the
/// verdict so the caller can replay them.
///
/// The [`FIRST_BYTES_TIMEOUT`] covers all of them, not each read: a peer that sends one byte at a
/// time cannot hold its connection slot for several timeouts.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Dialect> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        while buf.len() < SNIFF_LEN {
            if stream.read_buf(&mut buf).await? == 0 || !could_be(&buf) {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, read).await {
        Ok(read) => read?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "not {SNIFF_LEN} bytes from the client within {} s",
                    FIRST_BYTES_TIMEOUT.as_secs()
                ),
            ))
        }
    }
    Ok(classify(buf.freeze()))
}

fn could_be(buf: &[u8]) -> bool {
    [&b"GET "[..], b"SSH-", b"HEAD", b"POST"]
        .iter()
        .any(|p| p.starts_with(&buf[..buf.len().min(p.len())]))
}

fn classify(buf: Bytes) -> Dialect {
    if buf.is_empty() {
        Dialect::Probe
    } else if buf.starts_with(b"SSH-") {
        Dialect::Ssh(buf)
    } else if buf.len() >= SNIFF_LEN && buf[..SNIFF_LEN].iter().all(u8::is_ascii_uppercase)
        || buf.starts_with(b"GET ")
    {
        Dialect::Http(buf)
    } else {
        Dialect::Unknown(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniff_bytes(input: &'static [u8]) -> Dialect {
        let (mut far, mut near) = tokio::io::duplex(64);
        far.write_all(input).await.unwrap();
        drop(far);
        sniff(&mut near).await.unwrap()
    }

    fn kind(d: &Dialect) -> &'static str {
        match d {
            Dialect::Http(_) => "http",
            Dialect::Ssh(_) => "ssh",
            Dialect::Probe => "probe",
            Dialect::Unknown(_) => "unknown",
        }
    }

    #[tokio::test]
    async fn tells_dialects_apart() {
        let cases: [(&'static [u8], &str); 7] = [
            (b"GET / HTTP/1.1\r\n", "http"),
            (b"POST / HTTP/1.1\r\n", "http"),
            (b"SSH-2.0-OpenSSH_9.2\r\n", "ssh"),
            (b"", "probe"),
            (b"\x16\x03\x01\x02", "unknown"),
            (b"hello there", "unknown"),
            (b"SS", "unknown"),
        ];
        for (input, want) in cases {
            let got = sniff_bytes(input).await;
            assert_eq!(kind(&got), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_at_a_time_gets_one_timeout_in_all() {
        let (mut far, mut near) = tokio::io::duplex(64);
        let drip = tokio::spawn(async move {
            for b in b"GET " {
                tokio::time::sleep(FIRST_BYTES_TIMEOUT / 2).await;
                if far.write_all(&[*b]).await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        let e = sniff(&mut near).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), FIRST_BYTES_TIMEOUT);
        drip.abort();
    }

    #[tokio::test]
    async fn keeps_every_byte_read() {
        let got = sniff_bytes(b"SSH-2.0-x\r\n").await;
        let Dialect::Ssh(bytes) = got else {
            panic!("not ssh")
        };
        assert!(b"SSH-2.0-x\r\n".starts_with(&bytes));
    }

    #[tokio::test]
    async fn split_first_bytes_are_joined() {
        let (mut far, mut near) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            far.write_all(b"SS").await.unwrap();
            tokio::task::yield_now().await;
            far.write_all(b"H-2.0\r\n").await.unwrap();
        });
        let got = sniff(&mut near).await.unwrap();
        writer.await.unwrap();
        assert!(matches!(got, Dialect::Ssh(_)), "{got:?}");
    }
}
