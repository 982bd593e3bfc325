//! The smallest HTTP/1.1 client the coordinator needs: one `POST` of a JSON body on a
//! connection the caller opened, its answer read whole (Content-Length, chunked, or to
//! the end of the stream), everything bounded by a deadline. Used for etcd's JSON gateway
//! ([`crate::etcd`]) and for webhooks ([`crate::webhook`]); no TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Largest answer read (a range of the whole audit log stays well below).
const MAX_ANSWER: usize = 64 << 20;

pub enum Exchange {
    /// Status, body, whether the connection may be used again.
    Answer(u16, String, bool),
    /// The connection failed before an answer.
    Broken(String),
}

/// `POST path` with `body` (JSON) on `s`, `host` in the Host header and `headers` beside
/// it; reads the answer (Content-Length, chunked, or to the end) until `deadline`.
/// `Ok(Broken)` when the connection failed before any answer (a kept connection the
/// server closed: try a fresh one), `Err` when the answer was unusable.
pub fn post(
    mut s: &TcpStream,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    deadline: Instant,
) -> Result<Exchange, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    if let Err(e) = s.write_all(&req) {
        return Ok(Exchange::Broken(e.to_string()));
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    // Headers.
    let (status, head_len, length, chunked, close) = loop {
        let n = match s.read(&mut chunk) {
            Ok(0) => return Ok(Exchange::Broken("connection closed".into())),
            Ok(n) => n,
            Err(e) => return Ok(Exchange::Broken(e.to_string())),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut length = None;
                let mut chunked = false;
                let mut close = false;
                for h in resp.headers.iter() {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse::<usize>().ok();
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.contains("close");
                    }
                }
                break (resp.code.unwrap_or(0), len, length, chunked, close);
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            Ok(httparse::Status::Partial) => return Err("headers too long".into()),
            Err(e) => return Err(format!("bad HTTP answer: {e}")),
        }
    };
    let mut rest = buf.split_off(head_len);
    let mut fill = |rest: &mut Vec<u8>| -> Result<(), String> {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed in the answer".into());
        }
        if rest.len() + n > MAX_ANSWER {
            return Err("answer too large".into());
        }
        rest.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    // 1xx, 204 and 304 answers have no body, whatever the headers say.
    let bodiless = status == 204 || status == 304 || (100..200).contains(&status);
    let body = if bodiless {
        Vec::new()
    } else if let Some(len) = length {
        while rest.len() < len {
            fill(&mut rest)?;
        }
        rest.truncate(len);
        rest
    } else if chunked {
        // Chunks: size line, data, CRLF; a zero-size chunk ends the body.
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                fill(&mut rest)?;
            };
            let size_text = String::from_utf8_lossy(&rest[pos..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            while rest.len() < pos + size + 2 {
                fill(&mut rest)?;
            }
            out.extend_from_slice(&rest[pos..pos + size]);
            if out.len() > MAX_ANSWER {
                return Err("answer too large".into());
            }
            pos += size + 2;
        }
        // The final CRLF after the last chunk (no trailers are sent).
        while rest.len() < pos + 2 {
            fill(&mut rest)?;
        }
        out
    } else {
        // Until the server closes.
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
            if rest.len() > MAX_ANSWER {
                return Err("answer too large".into());
            }
        }
        return Ok(Exchange::Answer(
            status,
            String::from_utf8_lossy(&rest).into_owned(),
            false,
        ));
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok(Exchange::Answer(status, text, !close))
}
