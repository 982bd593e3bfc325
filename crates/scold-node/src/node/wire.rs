//! Framed JSON messages over an async stream, each read or write under a time limit:
//! what the edge protocols (admission, push) send over TLS. The codec is sans-IO in
//! [`scold_proto::frame`].

use scold_proto::frame::{edge_decoder, encode_message, next_message};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one message within `limit`.
pub async fn read_message<T: for<'de> Deserialize<'de>, S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Result<T, String> {
    let mut dec = edge_decoder();
    let mut buf = [0u8; 2048];
    tokio::time::timeout(limit, async {
        loop {
            if let Some(m) = next_message::<T>(&mut dec).map_err(|e| e.to_string())? {
                return Ok(m);
            }
            match s.read(&mut buf).await {
                Ok(0) => return Err("the peer closed the connection".to_string()),
                Ok(n) => dec.push(&buf[..n]),
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    })
    .await
    .map_err(|_| format!("no message within {} ms", limit.as_millis()))?
}

/// Writes one message within `limit`.
pub async fn write_message<T: Serialize, S: AsyncWrite + Unpin>(
    s: &mut S,
    msg: &T,
    limit: Duration,
) -> Result<(), String> {
    tokio::time::timeout(limit, s.write_all(&encode_message(msg)))
        .await
        .map_err(|_| format!("send took over {} ms", limit.as_millis()))?
        .map_err(|e| format!("send: {e}"))
}
