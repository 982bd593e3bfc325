//! The cookie exchange of [`scold_proto::cookie`] over TCP, before TLS: the listener's
//! side ([`Challenger`], [`read_preamble`], [`Prefixed`]) and the client's
//! ([`CookieCache`], [`Sniff`]).

use scold_daemon::Door;
use scold_proto::cookie::{
    encode_reply, parse_preamble, parse_reply, starts_cookie_message, Cookie, CookieError,
    CookieJar, Parsed, Preamble, Verdict, PREAMBLE_MAX, REPLY_LEN, ROTATE_EVERY, SECRET_LEN,
};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest wait for a preamble while the listener is under load: a client writes it
/// right behind TCP's handshake, so a connection that says nothing for this long is not
/// worth a place.
pub const UNDER_LOAD_PREAMBLE: Duration = Duration::from_millis(1000);

/// A listener's cookie state: its secrets and how many of its connections are not yet
/// admitted (in their TLS handshake, or waiting for their first request). At
/// `after` or more of them the listener is under load and demands cookies.
pub struct Challenger {
    jar: Mutex<CookieJar>,
    start: Instant,
    pending: Arc<AtomicUsize>,
    after: AtomicUsize,
}

/// One connection counted as not yet admitted; dropping it uncounts it.
pub struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn fresh_secret() -> [u8; SECRET_LEN] {
    rand::random()
}

impl Challenger {
    /// `after`: not-yet-admitted connections from which on cookies are demanded (0:
    /// always).
    pub fn new(after: usize) -> Arc<Challenger> {
        Arc::new(Challenger {
            jar: Mutex::new(CookieJar::new(Duration::ZERO, fresh_secret(), ROTATE_EVERY)),
            start: Instant::now(),
            pending: Arc::new(AtomicUsize::new(0)),
            after: AtomicUsize::new(after),
        })
    }

    /// A new load threshold (a config reload).
    pub fn set_after(&self, after: usize) {
        self.after.store(after, Ordering::Relaxed);
    }

    /// Connections held that are not yet admitted.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether handshakes are spent only on connections with a valid cookie now.
    pub fn under_load(&self) -> bool {
        let after = self.after.load(Ordering::Relaxed);
        after == 0 || self.pending() >= after
    }

    /// Counts a connection as not yet admitted until the returned guard is dropped.
    pub fn enter(&self) -> Pending {
        self.pending.fetch_add(1, Ordering::Relaxed);
        Pending(self.pending.clone())
    }

    /// The decision on a connection from `client` to `listener` that began with
    /// `preamble`, and for a challenge the reply to write.
    pub fn judge(
        &self,
        preamble: &Preamble,
        client: IpAddr,
        listener: SocketAddr,
    ) -> (Verdict, Option<[u8; REPLY_LEN]>) {
        let under_load = self.under_load();
        let now = self.start.elapsed();
        let mut jar = self.jar.lock().expect("cookie jar lock");
        if jar.due(now) {
            jar.rotate(now, fresh_secret());
        }
        let verdict = jar.judge(under_load, preamble, client, listener);
        let reply = matches!(verdict, Verdict::Challenge { .. })
            .then(|| encode_reply(&jar.make(client, listener)));
        (verdict, reply)
    }

    /// Reads `tcp`'s preamble and judges it: the stream to take into the TLS handshake
    /// (the bytes read past the preamble are kept for it), or `None` when the
    /// connection was answered with a cookie reply or closed; every such connection is
    /// counted and logged by `door` (`<listener>_cookie_demanded`, `_cookie_invalid`,
    /// `_no_preamble`, `_bad_preamble`, `_handshake_timeout`). `deadline` bounds the
    /// wait for the preamble when not under load.
    pub async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut tcp: S,
        peer: SocketAddr,
        listener: SocketAddr,
        door: &Door,
        deadline: Duration,
    ) -> Option<Prefixed<S>> {
        let wait = if self.under_load() {
            deadline.min(UNDER_LOAD_PREAMBLE)
        } else {
            deadline
        };
        let (preamble, rest) = match tokio::time::timeout(wait, read_preamble(&mut tcp)).await {
            Ok(Ok(p)) => p,
            Ok(Err(PreambleError::Bad(e))) => {
                door.refuse(peer, "bad_preamble", &e);
                return None;
            }
            Ok(Err(PreambleError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "connection closed before its preamble");
                return None;
            }
            Err(_) => {
                door.refuse(peer, "handshake_timeout", &"no preamble nor TLS in time");
                return None;
            }
        };
        match self.judge(&preamble, peer.ip(), listener) {
            (Verdict::Proceed, _) => Some(Prefixed::new(rest, tcp)),
            (Verdict::Challenge { reason }, reply) => {
                if let Some(reply) = reply {
                    // One small write into an empty socket buffer; then close.
                    let _ = tokio::time::timeout(UNDER_LOAD_PREAMBLE, tcp.write_all(&reply)).await;
                    let _ = tokio::time::timeout(UNDER_LOAD_PREAMBLE, tcp.shutdown()).await;
                }
                let pending = self.pending();
                door.refuse(
                    peer,
                    reason,
                    &format_args!(
                        "cookie reply sent instead of TLS: under load ({pending} connections not yet admitted)"
                    ),
                );
                None
            }
            (Verdict::Close { reason }, _) => {
                let pending = self.pending();
                door.refuse(
                    peer,
                    reason,
                    &format_args!(
                        "a client without the cookie preamble is not served under load ({pending} connections not yet admitted); it needs a newer agent"
                    ),
                );
                None
            }
        }
    }
}

/// Why no preamble was read.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    #[error("{0}")]
    Bad(#[from] CookieError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads what a connection starts with: the preamble (or none, for a client that sends
/// TLS at once) and the bytes read past it, which belong to the TLS handshake.
pub async fn read_preamble<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(Preamble, Vec<u8>), PreambleError> {
    let mut buf = [0u8; PREAMBLE_MAX];
    let mut have = 0;
    loop {
        if let Parsed::Done(p, n) = parse_preamble(&buf[..have])? {
            return Ok((p, buf[n..have].to_vec()));
        }
        // Never past the longest preamble: what follows it stays in the socket.
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its preamble").into(),
            );
        }
        have += n;
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(head: Vec<u8>, inner: S) -> Self {
        Prefixed {
            head,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.head[pos..pos + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The cookie a listener answered with, where the client's TLS layer cannot carry it.
pub type CookieSlot = Arc<Mutex<Option<Cookie>>>;

/// The client's end: the first bytes from the listener are either TLS or a cookie
/// reply. A cookie reply is read whole, put in the slot, and ends the stream with an
/// error, so the TLS handshake fails and the client connects again with the cookie.
/// TLS passes through untouched.
pub struct Sniff<S> {
    inner: S,
    state: SniffState,
    slot: CookieSlot,
}

enum SniffState {
    /// Nothing read yet.
    Start,
    /// A cookie reply, partly read.
    Reply(Vec<u8>),
    /// TLS: everything passes.
    Tls,
}

impl<S> Sniff<S> {
    pub fn new(inner: S) -> Self {
        Sniff {
            inner,
            state: SniffState::Start,
            slot: Arc::default(),
        }
    }

    /// Where a cookie reply's cookie will be.
    pub fn slot(&self) -> CookieSlot {
        self.slot.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                SniffState::Tls => return Pin::new(&mut self.inner).poll_read(cx, buf),
                SniffState::Start => {
                    let before = buf.filled().len();
                    std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
                    let got = &buf.filled()[before..];
                    match got.first() {
                        // End of stream: the TLS layer reports it.
                        None => return Poll::Ready(Ok(())),
                        Some(&b) if !starts_cookie_message(b) => {
                            self.state = SniffState::Tls;
                            return Poll::Ready(Ok(()));
                        }
                        Some(_) => {
                            let got = got.to_vec();
                            buf.set_filled(before);
                            self.state = SniffState::Reply(got);
                        }
                    }
                }
                SniffState::Reply(have) => {
                    match parse_reply(have) {
                        Ok(Parsed::Done(c, _)) => {
                            *self.slot.lock().expect("cookie slot") = Some(c);
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::ConnectionRefused,
                                "the listener is under load and demands a cookie",
                            )));
                        }
                        Ok(Parsed::NeedMore) => {}
                        Err(e) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("neither TLS nor a cookie reply: {e}"),
                            )))
                        }
                    }
                    let mut more = [0u8; REPLY_LEN];
                    let mut rb = ReadBuf::new(&mut more);
                    std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed inside a cookie reply",
                        )));
                    }
                    let filled = rb.filled().to_vec();
                    if let SniffState::Reply(have) = &mut self.state {
                        have.extend_from_slice(&filled);
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Most listeners a client keeps a cookie for (an ALT set has a handful of proxies).
const CACHE_MAX: usize = 256;

/// The cookies a client holds, one per listener address. Shared by clones.
#[derive(Clone, Default)]
pub struct CookieCache(Arc<Mutex<HashMap<SocketAddr, Cookie>>>);

impl CookieCache {
    pub fn get(&self, listener: SocketAddr) -> Option<Cookie> {
        self.0.lock().expect("cookie cache").get(&listener).copied()
    }

    pub fn put(&self, listener: SocketAddr, cookie: Cookie) {
        let mut m = self.0.lock().expect("cookie cache");
        if m.len() >= CACHE_MAX && !m.contains_key(&listener) {
            // Stale cookies cost one round trip each; holding them all is not worth more.
            m.clear();
        }
        m.insert(listener, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scold_proto::cookie::{encode_preamble, REPLY_MAGIC};
    use scold_proto::limits::ConnLimits;

    #[tokio::test]
    async fn a_preamble_is_read_and_what_follows_is_kept_for_tls() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let c = Cookie([9; 16]);
        let mut sent = encode_preamble(Some(&c));
        sent.extend_from_slice(b"\x16\x03\x01hello");
        // In two pieces, the first inside the cookie.
        a.write_all(&sent[..10]).await.unwrap();
        let reader = tokio::spawn(async move {
            let (p, rest) = read_preamble(&mut b).await.unwrap();
            let mut s = Prefixed::new(rest, b);
            let mut out = vec![0u8; 8];
            s.read_exact(&mut out).await.unwrap();
            (p, out)
        });
        a.write_all(&sent[10..]).await.unwrap();
        let (p, out) = reader.await.unwrap();
        assert_eq!(p, Preamble::Cookie(c));
        assert_eq!(out, b"\x16\x03\x01hello");
    }

    #[tokio::test]
    async fn a_legacy_client_loses_no_byte() {
        let (mut a, mut b) = tokio::io::duplex(256);
        a.write_all(b"\x16\x03\x01abc").await.unwrap();
        let (p, rest) = read_preamble(&mut b).await.unwrap();
        assert_eq!(p, Preamble::Legacy);
        let mut s = Prefixed::new(rest, b);
        let mut out = vec![0u8; 6];
        s.read_exact(&mut out).await.unwrap();
        assert_eq!(out, b"\x16\x03\x01abc");
    }

    #[tokio::test]
    async fn the_client_tells_a_cookie_reply_from_tls() {
        // TLS passes through.
        let (mut srv, cli) = tokio::io::duplex(256);
        srv.write_all(b"\x16\x03\x03xyz").await.unwrap();
        let mut s = Sniff::new(cli);
        let mut out = [0u8; 6];
        s.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"\x16\x03\x03xyz");
        assert!(s.slot().lock().unwrap().is_none());
        // A cookie reply, cut in two, fails the stream and leaves its cookie.
        let (mut srv, cli) = tokio::io::duplex(256);
        let c = Cookie([3; 16]);
        let reply = encode_reply(&c);
        assert_eq!(reply[..4], REPLY_MAGIC);
        let mut s = Sniff::new(cli);
        let slot = s.slot();
        let w = tokio::spawn(async move {
            srv.write_all(&reply[..3]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            srv.write_all(&reply[3..]).await.unwrap();
            srv
        });
        let mut out = [0u8; 1];
        let e = s.read(&mut out).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(*slot.lock().unwrap(), Some(c));
        drop(w.await.unwrap());
    }

    #[tokio::test]
    async fn under_load_a_connection_without_its_cookie_gets_one_and_no_tls() {
        let ch = Challenger::new(0);
        let m = scold_metrics::Metrics::new();
        let door = Door::new("admission", ConnLimits::new(8, 64, 1024), Some(m.clone()));
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let listener: SocketAddr = "198.51.100.1:5443".parse().unwrap();
        let deadline = Duration::from_secs(1);

        // No cookie: a cookie reply and the end of the stream.
        let (mut cli, srv) = tokio::io::duplex(256);
        cli.write_all(&encode_preamble(None)).await.unwrap();
        cli.write_all(b"\x16\x03\x01").await.unwrap();
        assert!(ch
            .admit(srv, peer, listener, &door, deadline)
            .await
            .is_none());
        let mut got = Vec::new();
        cli.read_to_end(&mut got).await.unwrap();
        let Ok(Parsed::Done(cookie, REPLY_LEN)) = parse_reply(&got) else {
            panic!("no cookie reply: {got:?}");
        };

        // With it: the TLS bytes go on.
        let (mut cli, srv) = tokio::io::duplex(256);
        cli.write_all(&encode_preamble(Some(&cookie)))
            .await
            .unwrap();
        cli.write_all(b"\x16\x03\x01").await.unwrap();
        let mut s = ch
            .admit(srv, peer, listener, &door, deadline)
            .await
            .unwrap();
        let mut out = [0u8; 3];
        s.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"\x16\x03\x01");

        // The same cookie from another address: a fresh cookie for that one, no TLS.
        let other: SocketAddr = "192.0.2.2:40000".parse().unwrap();
        let (mut cli, srv) = tokio::io::duplex(256);
        cli.write_all(&encode_preamble(Some(&cookie)))
            .await
            .unwrap();
        assert!(ch
            .admit(srv, other, listener, &door, deadline)
            .await
            .is_none());
        let mut got = Vec::new();
        cli.read_to_end(&mut got).await.unwrap();
        assert!(matches!(parse_reply(&got), Ok(Parsed::Done(c, _)) if c != cookie));

        // A legacy client: closed without a word.
        let (mut cli, srv) = tokio::io::duplex(256);
        cli.write_all(b"\x16\x03\x01").await.unwrap();
        assert!(ch
            .admit(srv, peer, listener, &door, deadline)
            .await
            .is_none());
        let mut got = Vec::new();
        cli.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());

        let text = m.render();
        for reason in ["cookie_demanded", "cookie_invalid", "no_preamble"] {
            assert!(
                text.contains(&format!("reason=\"admission_{reason}\"}} 1")),
                "{reason}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn load_is_the_count_of_connections_not_yet_admitted() {
        let ch = Challenger::new(2);
        assert!(!ch.under_load());
        let a = ch.enter();
        assert!(!ch.under_load());
        let b = ch.enter();
        assert!(ch.under_load());
        drop(a);
        assert!(!ch.under_load());
        drop(b);
        assert_eq!(ch.pending(), 0);
        // Not under load, anything goes on, even a cookie from elsewhere.
        let door = Door::new("admission", ConnLimits::new(8, 64, 1024), None);
        let (mut cli, srv) = tokio::io::duplex(256);
        cli.write_all(&encode_preamble(Some(&Cookie([1; 16]))))
            .await
            .unwrap();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert!(ch
            .admit(
                srv,
                peer,
                "198.51.100.1:5443".parse().unwrap(),
                &door,
                Duration::from_secs(1)
            )
            .await
            .is_some());
    }
}
