//! Framing of the control channel.
//!
//! A frame is a 4-byte big-endian length `L`, then `L` bytes: one version byte and the
//! message body (JSON). The length counts the version byte. Frames larger than the
//! decoder's limit are refused before any of their body is buffered, so a peer cannot
//! make us allocate more than the limit.

use thiserror::Error;

/// The control protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Default upper bound of one frame (length field value).
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024;
const HEADER: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("unsupported control protocol version {got} (this build speaks {VERSION}); upgrade the older peer")]
    Version { got: u8 },
}

/// Encodes one frame around `body`.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    let len = body.len() + 1;
    out.reserve(HEADER + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(VERSION);
    out.extend_from_slice(body);
}

/// Incremental decoder: feed bytes as they arrive, take out whole frame bodies.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder {
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max: max_frame,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete frame body, `Ok(None)` when more bytes are needed.
    /// After an error the stream is unusable: the caller must close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if avail.len() < HEADER + len {
            return Ok(None);
        }
        let version = avail[HEADER];
        if version != VERSION {
            return Err(FrameError::Version { got: version });
        }
        let body = avail[HEADER + 1..HEADER + len].to_vec();
        self.start += HEADER + len;
        // Compact once the consumed prefix dominates, so the buffer does not grow forever.
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut wire = Vec::new();
        encode(b"hello", &mut wire);
        encode(b"", &mut wire);
        encode(b"world!", &mut wire);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn refuses_oversized_before_buffering() {
        let mut d = Decoder::new(16);
        d.push(&1000u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 1000, max: 16 })
        );
    }

    #[test]
    fn refuses_wrong_version_and_empty() {
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 2, 9, b'x']);
        assert_eq!(d.next_frame(), Err(FrameError::Version { got: 9 }));
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(128);
            d.push(&bytes);
            for _ in 0..64 {
                match d.next_frame() {
                    Ok(Some(f)) => prop_assert!(f.len() < 128),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn round_trip_any(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..10)) {
            let mut wire = Vec::new();
            for b in &bodies { encode(b, &mut wire); }
            let mut d = Decoder::default();
            d.push(&wire);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().unwrap() { got.push(f); }
            prop_assert_eq!(got, bodies);
        }
    }
}

/// Largest frame of the edge protocols (admission and push), whose peers may be
/// unauthenticated clients: small, so a peer cannot make us buffer much.
pub const EDGE_MAX_FRAME: usize = 4096;

/// A decoder with the edge protocols' frame limit.
pub fn edge_decoder() -> Decoder {
    Decoder::new(EDGE_MAX_FRAME)
}

/// A framed JSON message could not be read.
#[derive(Debug, Error)]
pub enum MessageError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("message is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// One JSON message in one frame.
pub fn encode_message<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("protocol messages always serialise");
    let mut out = Vec::with_capacity(body.len() + 5);
    encode(&body, &mut out);
    out
}

/// The next JSON message from `d`, if a whole frame is buffered.
pub fn next_message<T: for<'de> serde::Deserialize<'de>>(
    d: &mut Decoder,
) -> Result<Option<T>, MessageError> {
    match d.next_frame()? {
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
        None => Ok(None),
    }
}
