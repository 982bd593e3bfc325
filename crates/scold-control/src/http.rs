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
        let n = match read_within(s, &mut chunk, deadline) {
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
    if length.is_some_and(|l| l > MAX_ANSWER) {
        return Err("answer too large".into());
    }
    let mut rest = buf.split_off(head_len);
    let mut fill = |rest: &mut Vec<u8>| -> Result<(), String> {
        let n = read_within(s, &mut chunk, deadline).map_err(|e| e.to_string())?;
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
                .ok()
                .filter(|n| *n <= MAX_ANSWER)
                .ok_or_else(|| format!("bad chunk size {size_text:?}"))?;
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
            match read_within(s, &mut chunk, deadline) {
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

/// One read that ends by `deadline` at the latest: however slowly a peer sends, the
/// whole answer takes no longer than the caller allowed.
fn read_within(mut s: &TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    s.set_read_timeout(Some(left))?;
    s.read(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// Posts to a loopback server that answers `answer` (sent in pieces `gap` apart),
    /// within `limit`.
    fn against(answer: &'static [u8], gap: Duration, limit: Duration) -> Result<Exchange, String> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = c.read(&mut req);
            for piece in answer.chunks(8) {
                if c.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        });
        let s = TcpStream::connect(addr).unwrap();
        let r = post(&s, "x", "/", &[], b"{}", Instant::now() + limit);
        drop(s);
        let _ = server.join();
        r
    }

    fn text(r: Result<Exchange, String>) -> String {
        match r {
            Ok(Exchange::Answer(status, body, _)) => format!("{status} {body}"),
            Ok(Exchange::Broken(why)) => format!("broken: {why}"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn answers_of_each_framing_are_read() {
        let fast = Duration::ZERO;
        let second = Duration::from_secs(1);
        let r = text(against(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            fast,
            second,
        ));
        assert_eq!(r, "200 {}");
        let r = text(against(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
            fast,
            second,
        ));
        assert_eq!(r, "200 {}");
        let r = text(against(b"HTTP/1.1 204 No Content\r\n\r\n", fast, second));
        assert_eq!(r, "204 ");
    }

    /// What a hostile or broken peer (a webhook receiver, something posing as etcd) may
    /// answer: an error, never a panic, a hang or an unbounded buffer.
    #[test]
    fn garbage_answers_are_errors() {
        let fast = Duration::ZERO;
        let second = Duration::from_secs(1);
        for (answer, want) in [
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "error: bad HTTP answer"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
                "error: bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "error: bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                "error: answer too large",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "error: connection closed in the answer",
            ),
            (b"", "broken: connection closed"),
        ] {
            let r = text(against(answer, fast, second));
            assert!(r.starts_with(want), "{answer:?}: {r}");
        }
        // A peer that drips its answer a piece at a time is cut at the deadline, not
        // after one read timeout per piece.
        let t = Instant::now();
        let r = text(against(
            b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n0123456789012345678901234567890123456789",
            Duration::from_millis(150),
            Duration::from_millis(500),
        ));
        assert!(r.starts_with("error") || r.starts_with("broken"), "{r}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
    }
}
