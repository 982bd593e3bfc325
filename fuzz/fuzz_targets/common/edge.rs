//! What the admission and push fuzz targets share: reading an edge-protocol stream in
//! arbitrary chunks as the daemons do, and a message's round trip through the codec.

use scold_proto::frame::{edge_decoder, encode_message, next_message, EDGE_MAX_FRAME};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// The frame header: 4-byte length (the version byte counts in the body limit).
pub const HEADER: usize = 4;

/// Reads `stream` pushed in the given chunk sizes as the daemons do: push, then take
/// out every whole message. Returns the messages and the error that ended the stream.
pub fn decode<T: DeserializeOwned>(stream: &[u8], sizes: &[u8]) -> (Vec<T>, Option<String>) {
    let mut d = edge_decoder();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    loop {
        // Size 0 is a read that returned nothing new; it must not change anything.
        let n = if sizes.is_empty() {
            rest.len()
        } else {
            usize::from(sizes[i % sizes.len()]).min(rest.len())
        };
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.push(chunk);
        loop {
            match next_message::<T>(&mut d) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {
                    assert!(
                        d.pending() < HEADER + EDGE_MAX_FRAME,
                        "decoder holds {} bytes while waiting",
                        d.pending()
                    );
                    break;
                }
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        if rest.is_empty() {
            return (out, None);
        }
        // Guard against a split list of zeros spinning forever.
        if i > stream.len() * 2 + sizes.len() + 2 {
            d.push(rest);
            rest = &[];
        }
    }
}

/// Encodes `m` and reads it back.
pub fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(m: &T) -> Vec<u8> {
    let wire = encode_message(m);
    let mut d = edge_decoder();
    d.push(&wire);
    match next_message::<T>(&mut d) {
        // A message decoded from a frame of at most the edge limit re-encodes to a
        // frame no larger than a few bytes more (JSON escapes may differ); only one that
        // fits is read back.
        Ok(Some(back)) => assert_eq!(&back, m, "message changed in a round trip"),
        Ok(None) => unreachable!("a whole frame was pushed"),
        Err(e) => {
            assert!(
                wire.len() > HEADER + EDGE_MAX_FRAME,
                "re-encoded message does not decode: {e}\n{m:?}"
            );
        }
    }
    assert_eq!(encode_message(m), wire, "encoding is not stable");
    wire
}
