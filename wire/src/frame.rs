//! RFC 6455 frame headers and masking: the part of WebSocket a byte tunnel needs, with no
//! allocation and no copy of the payload.

/// The longest header: 2 bytes, a 64-bit length and a masking key.
pub const MAX_HEADER: usize = 14;

/// Longest payload of a control frame (RFC 6455 5.5).
pub const MAX_CONTROL: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// A header that breaks the protocol; the connection ends with close code 1002.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame longer than 125 bytes or fragmented")]
    Control,
    #[error("a frame length with its top bit set")]
    Length,
}

impl Header {
    /// Parses a header from the start of `buf`: the header and its length, or `None` when `buf`
    /// does not hold a whole header yet.
    ///
    /// # Errors
    /// A header RFC 6455 does not allow.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().unwrap_or_default());
                    if len >> 63 != 0 {
                        return Err(FrameError::Length);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > MAX_CONTROL as u64) {
            return Err(FrameError::Control);
        }
        let mask = if masked {
            let Some(key) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            Header {
                fin,
                opcode,
                mask,
                len,
            },
            at,
        )))
    }

    /// Writes the header into `out`, returning how many bytes it took.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        out[0] = u8::from(self.fin) << 7 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = match self.len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }
}

/// The mask key as it applies from byte `offset` of the payload on, repeated to 8 bytes.
fn key_word(key: [u8; 4], offset: usize) -> [u8; 8] {
    let mut word = [0u8; 8];
    for (i, b) in word.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    word
}

/// Masks (or unmasks: it is its own inverse) `data` in place, `data` starting at byte `offset`
/// of the payload. Eight bytes at a time; the compiler vectorises the loop.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let word = u64::from_ne_bytes(key_word(key, offset));
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().unwrap_or_default()) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let word = key_word(key, offset);
    for (b, k) in chunks.into_remainder().iter_mut().zip(word) {
        *b ^= k;
    }
}

/// Copies `src` into `dst` (the same length) masked, in one pass.
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    debug_assert_eq!(dst.len(), src.len());
    let word = u64::from_ne_bytes(key_word(key, offset));
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(sc.try_into().unwrap_or_default()) ^ word;
        dc.copy_from_slice(&v.to_ne_bytes());
    }
    let word = key_word(key, offset);
    for ((db, sb), k) in d.into_remainder().iter_mut().zip(s.remainder()).zip(word) {
        *db = sb ^ k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fin: bool, opcode: Opcode, mask: Option<[u8; 4]>, len: u64) -> Header {
        Header {
            fin,
            opcode,
            mask,
            len,
        }
    }

    #[test]
    fn encode_and_parse_agree_at_every_length_form() {
        for len in [0, 1, 125, 126, 0xFFFF, 0x10000, 256 * 1024, u64::MAX >> 1] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(true, Opcode::Binary, mask, len);
                let mut out = [0u8; MAX_HEADER];
                let n = h.encode(&mut out);
                assert_eq!(Header::parse(&out[..n]), Ok(Some((h, n))), "{len} {mask:?}");
                assert_eq!(Header::parse(&out[..n - 1]), Ok(None), "{len} {mask:?}");
            }
        }
    }

    #[test]
    fn parses_known_bytes() {
        // RFC 6455 5.7: a masked "Hello" from a client, and an unmasked ping.
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = Header::parse(&hello).unwrap().unwrap();
        assert_eq!(
            h,
            header(true, Opcode::Text, Some([0x37, 0xfa, 0x21, 0x3d]), 5)
        );
        let mut payload = hello[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        let ping = [0x89, 0x05, b'H', b'e', b'l', b'l', b'o'];
        assert_eq!(
            Header::parse(&ping),
            Ok(Some((header(true, Opcode::Ping, None, 5), 2)))
        );
    }

    #[test]
    fn rejects_what_the_protocol_forbids() {
        let cases: [(&[u8], FrameError); 5] = [
            (&[0xC2, 0x00], FrameError::Reserved),
            (&[0x83, 0x00], FrameError::Opcode(3)),
            (&[0x09, 0x00], FrameError::Control),
            (&[0x88, 0x7E, 0x00, 0x7E], FrameError::Control),
            (&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], FrameError::Length),
        ];
        for (bytes, want) in cases {
            assert_eq!(Header::parse(bytes), Err(want), "{bytes:x?}");
        }
    }

    #[test]
    fn masking_matches_the_bytewise_definition_at_any_offset() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for offset in 0..8 {
            for len in [0, 1, 7, 8, 9, 63, 1000 - offset] {
                let src = &data[offset..offset + len];
                let want: Vec<u8> = src
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(offset + i) % 4])
                    .collect();
                let mut in_place = src.to_vec();
                apply_mask(&mut in_place, key, offset);
                assert_eq!(in_place, want, "in place, offset {offset} len {len}");
                let mut copied = vec![0u8; len];
                copy_masked(&mut copied, src, key, offset);
                assert_eq!(copied, want, "copied, offset {offset} len {len}");
            }
        }
    }
}
