//! Control channel: bytes from a peer, cut into arbitrary read sizes, through the frame
//! decoder and the message codec.
//!
//! Properties:
//! - the frames (and the error that ends the stream, if any) do not depend on how the
//!   bytes were split into reads;
//! - no frame body reaches the limit, and the decoder never holds more than one
//!   incomplete frame's worth of bytes after it asked for more (the limit is enforced
//!   before buffering);
//! - every body that decodes as a `Message` re-encodes to bytes that decode to an equal
//!   message, and survive a frame round trip;
//! - the authorisation table has an answer for every request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_proto::control::{policy, Message};
use scold_proto::frame::{self, Decoder, FrameError};

const LIMIT: usize = 4096;
const HEADER: usize = 4;

/// Runs the decoder over `stream` pushed in the given chunk sizes, draining after each
/// push as the daemons do. Returns the frames and the error that ended the stream.
fn decode(stream: &[u8], sizes: &[u8]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut d = Decoder::new(LIMIT);
    let mut frames = Vec::new();
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
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() < LIMIT, "frame body of {} bytes", f.len());
                    frames.push(f);
                }
                Ok(None) => {
                    assert!(
                        d.pending() < HEADER + LIMIT,
                        "decoder holds {} bytes while waiting",
                        d.pending()
                    );
                    break;
                }
                Err(e) => return (frames, Some(e)),
            }
        }
        if rest.is_empty() {
            return (frames, None);
        }
        // Guard against a split list of zeros spinning forever.
        if i > stream.len() * 2 + sizes.len() + 2 {
            d.push(rest);
            rest = &[];
        }
    }
}

fn check_message(body: &[u8]) {
    let Ok(m) = Message::from_bytes(body) else {
        return;
    };
    let bytes = m.to_bytes();
    let again = Message::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}\n{m:?}"));
    assert_eq!(m, again, "message changed in a round trip");
    assert_eq!(bytes, again.to_bytes(), "encoding is not stable");

    let mut wire = Vec::new();
    frame::encode(&bytes, &mut wire);
    let mut d = Decoder::new(bytes.len() + 1);
    d.push(&wire);
    assert_eq!(d.next_frame(), Ok(Some(bytes)));
    assert_eq!(d.pending(), 0);

    if let Message::Request { request, .. } = &m {
        let _ = request.kind();
        let _ = policy(request);
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many split sizes follow; then the sizes; then the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let (frames, err) = decode(stream, sizes);
    let (whole, whole_err) = decode(stream, &[]);
    assert_eq!(frames, whole, "frames depend on the read sizes");
    assert_eq!(err, whole_err, "stream error depends on the read sizes");

    for f in &frames {
        check_message(f);
    }
    // Bodies also arrive unframed in tests and tools: try the whole stream as one.
    check_message(stream);
});
