//! The agent's DNS front (scheme 4.1): a stub resolver the host's resolv.conf points at.
//! It forwards every query to the site's resolvers (ClientDNS); beside an A/AAAA
//! question it asks for the name's ALT records, and when there are some it has the agent
//! bring the indirect route up before the application gets its answer. The agent also
//! reads ALT sets through it ([`DnsFront::alt`]).

use super::event::Event;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub(super) struct DnsFront {
    /// The site's resolvers, tried in order.
    pub(super) upstream: Vec<SocketAddr>,
    pub(super) timeout: Duration,
    pub(super) alt_type: u16,
    /// The agent's loop.
    pub(super) events: mpsc::Sender<Event>,
}

/// Longest wait for the indirect route before the answer goes out anyway.
const SETUP_WAIT: Duration = Duration::from_secs(4);
/// Queries answered at once over UDP, and TCP connections served at once.
const MAX_IN_FLIGHT: usize = 512;
const MAX_TCP: usize = 128;

fn name_key(n: &Name) -> String {
    let mut s = n.to_ascii().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

impl DnsFront {
    pub(super) async fn start(
        self: Arc<Self>,
        listen: SocketAddr,
    ) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
        let udp = Arc::new(tokio::net::UdpSocket::bind(listen).await?);
        let tcp = tokio::net::TcpListener::bind(listen).await?;
        let me = self.clone();
        let udp_task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, src) = match udp.recv_from(&mut buf).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS receive failed");
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%src, "too many DNS queries in flight; dropping one");
                    continue;
                };
                let req = buf[..n].to_vec();
                let me = me.clone();
                let udp = udp.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(resp) = me.answer(&req, true).await {
                        let _ = udp.send_to(&resp, src).await;
                    }
                });
            }
        });
        let me = self;
        let tcp_task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    loop {
                        let mut lb = [0u8; 2];
                        let read =
                            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut lb))
                                .await;
                        if !matches!(read, Ok(Ok(_))) {
                            break;
                        }
                        let mut req = vec![0u8; u16::from_be_bytes(lb) as usize];
                        if !matches!(
                            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut req))
                                .await,
                            Ok(Ok(_))
                        ) {
                            break;
                        }
                        let Some(resp) = me.answer(&req, false).await else {
                            break;
                        };
                        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(vec![udp_task, tcp_task])
    }

    /// Sends `req` to the upstreams in order; the first usable answer.
    async fn forward(&self, req: &[u8]) -> Option<Vec<u8>> {
        for server in &self.upstream {
            match scold_dns::net::exchange(
                *server,
                req,
                self.timeout,
                scold_dns::net::Transport::Auto,
            )
            .await
            {
                Ok(r) if r.len() >= 12 => {
                    let rcode = r[3] & 0x0f;
                    // SERVFAIL and REFUSED: the next upstream may do better.
                    if (rcode == 2 || rcode == 5)
                        && server != self.upstream.last().expect("non-empty")
                    {
                        continue;
                    }
                    return Some(r);
                }
                Ok(_) => continue,
                Err(e) => tracing::debug!(%server, error = %e, "upstream did not answer"),
            }
        }
        None
    }

    /// The ALT set of `name` and its TTL (for an empty set: the negative TTL).
    pub(super) async fn alt(&self, name: &str) -> Result<(Vec<IpAddr>, u32), String> {
        let qname = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(qname, RecordType::Unknown(self.alt_type)));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
        let bytes = m.to_vec().map_err(|e| e.to_string())?;
        let r = self
            .forward(&bytes)
            .await
            .ok_or_else(|| "no upstream answered the ALT query".to_string())?;
        let resp = Message::from_vec(&r).map_err(|e| format!("ALT answer: {e}"))?;
        if resp.metadata.id != m.metadata.id {
            return Err("ALT answer with another ID".into());
        }
        alt_from_response(&resp, self.alt_type)
    }

    /// Answers one query from an application; None: send nothing.
    async fn answer(&self, req: &[u8], udp: bool) -> Option<Vec<u8>> {
        let parsed = Message::from_vec(req).ok();
        let question = parsed.as_ref().and_then(|m| {
            let q = m.queries.first()?;
            let scold = m.metadata.message_type == MessageType::Query
                && m.metadata.op_code == OpCode::Query
                && q.query_class() == DNSClass::IN
                && matches!(q.query_type(), RecordType::A | RecordType::AAAA);
            scold.then(|| name_key(q.name()))
        });
        let (resp, alt) = match &question {
            Some(name) => {
                let (r, a) = tokio::join!(self.forward(req), self.alt(name));
                (r, Some(a))
            }
            None => (self.forward(req).await, None),
        };
        let resp = match resp {
            Some(r) => r,
            None => return parsed.map(|m| servfail(&m)),
        };
        if let (Some(name), Some(alt)) = (question, alt) {
            let targets = Message::from_vec(&resp)
                .ok()
                .filter(|m| m.metadata.response_code == ResponseCode::NoError)
                .map(|m| addresses(&m))
                .unwrap_or_default();
            match alt {
                Ok((alts, ttl)) if !alts.is_empty() => {
                    if !targets.is_empty() {
                        let (tx, rx) = oneshot::channel();
                        let ev = Event::Lookup {
                            name: name.clone(),
                            targets,
                            alts,
                            ttl,
                            done: tx,
                        };
                        if self.events.send(ev).await.is_ok()
                            && tokio::time::timeout(SETUP_WAIT, rx).await.is_err()
                        {
                            tracing::warn!(%name, "indirect route not ready in time; answering anyway");
                        }
                    }
                }
                Ok(_) => {
                    let _ = self.events.send(Event::NoAlt { name }).await;
                }
                Err(e) => tracing::debug!(%name, error = %e, "ALT lookup failed; routes unchanged"),
            }
        }
        Some(if udp { fit_udp(req, resp) } else { resp })
    }
}

/// The ALT addresses of a response and their TTL; NODATA/NXDOMAIN give an empty set with
/// the negative TTL.
fn alt_from_response(resp: &Message, alt_type: u16) -> Result<(Vec<IpAddr>, u32), String> {
    match resp.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rc => return Err(format!("ALT query answered {rc}")),
    }
    let mut alts = Vec::new();
    let mut ttl = u32::MAX;
    for r in &resp.answers {
        if u16::from(r.record_type()) != alt_type {
            continue;
        }
        let wire = scold_dns::wire::rdata_wire(&r.data).map_err(|e| e.to_string())?;
        match scold_dns::alt::AltRdata::from_wire(&wire) {
            Ok(a) => {
                if !alts.contains(&a.addr()) {
                    alts.push(a.addr());
                }
                ttl = ttl.min(r.ttl);
            }
            Err(e) => tracing::warn!(error = %e, "malformed ALT record ignored"),
        }
    }
    if alts.is_empty() {
        ttl = resp
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(5);
    }
    Ok((alts, ttl))
}

/// A/AAAA addresses in the answer section.
fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v
}

fn servfail(req: &Message) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.response_code = ResponseCode::ServFail;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    if let Some(q) = req.queries.first() {
        m.add_query(q.clone());
    }
    m.to_vec().unwrap_or_default()
}

/// An upstream answer that may have come over TCP, cut to what the application's UDP
/// query allows (its EDNS payload size, or 512): truncated with TC set if larger.
fn fit_udp(req: &[u8], resp: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(req)
        .ok()
        .and_then(|m| m.edns.as_ref().map(|e| e.max_payload()))
        .unwrap_or(512)
        .max(512) as usize;
    if resp.len() <= limit {
        return resp;
    }
    match Message::from_vec(&resp) {
        Ok(m) => {
            let mut t = m.truncate();
            t.metadata.truncation = true;
            t.to_vec().unwrap_or_default()
        }
        Err(_) => resp[..12.min(resp.len())].to_vec(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Record, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(rcode: ResponseCode) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(
            name("www.site.example."),
            RecordType::Unknown(65280),
        ));
        m
    }

    fn alt_record(bytes: &[u8], ttl: u32) -> Record {
        let data = RData::Unknown {
            code: RecordType::Unknown(65280),
            rdata: hickory_proto::rr::rdata::NULL::with(bytes.to_vec()),
        };
        Record::from_rdata(name("www.site.example."), ttl, data)
    }

    fn soa(minimum: u32) -> Record {
        Record::from_rdata(
            name("site.example."),
            60,
            RData::SOA(SOA::new(
                name("ns.site.example."),
                name("admin.site.example."),
                1,
                60,
                60,
                600,
                minimum,
            )),
        )
    }

    #[test]
    fn alt_set_from_an_answer() {
        let mut m = response(ResponseCode::NoError);
        m.add_answer(alt_record(&[10, 1, 0, 11], 30));
        m.add_answer(alt_record(&[10, 1, 0, 12], 20));
        // Duplicates and malformed RDATA (neither 4 nor 16 bytes) are not addresses.
        m.add_answer(alt_record(&[10, 1, 0, 12], 20));
        m.add_answer(alt_record(&[1, 2, 3], 5));
        // Another type in the answer does not count.
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        let bytes = m.to_vec().unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        let (alts, ttl) = alt_from_response(&m, 65280).unwrap();
        assert_eq!(alts, vec![ip("10.1.0.11"), ip("10.1.0.12")]);
        assert_eq!(ttl, 20);
        // Under another ALT code the same records are not ALT.
        assert!(alt_from_response(&m, 65281).unwrap().0.is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_alt_uses_the_negative_ttl_and_failures_are_errors() {
        let mut m = response(ResponseCode::NoError);
        m.add_authority(soa(3));
        let (alts, ttl) = alt_from_response(&m, 65280).unwrap();
        assert!(alts.is_empty());
        assert_eq!(ttl, 3);
        let m = response(ResponseCode::NXDomain);
        assert_eq!(alt_from_response(&m, 65280).unwrap(), (vec![], 5));
        assert!(alt_from_response(&response(ResponseCode::ServFail), 65280).is_err());
        assert!(alt_from_response(&response(ResponseCode::Refused), 65280).is_err());
    }

    #[test]
    fn addresses_of_an_answer() {
        let mut m = response(ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        m.add_answer(alt_record(&[10, 1, 0, 11], 30));
        assert_eq!(addresses(&m), vec![ip("10.4.0.2")]);
    }

    #[test]
    fn large_answers_are_truncated_for_udp() {
        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name("big.site.example."), RecordType::A));
        let req = q.to_vec().unwrap();
        let mut r = Message::response(9, OpCode::Query);
        r.add_query(Query::query(name("big.site.example."), RecordType::A));
        for i in 0..60u8 {
            r.add_answer(Record::from_rdata(
                name("big.site.example."),
                1,
                RData::A(A::new(10, 4, 1, i)),
            ));
        }
        let big = r.to_vec().unwrap();
        assert!(big.len() > 512);
        let cut = fit_udp(&req, big);
        assert!(cut.len() <= 512);
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        // Garbage from upstream is cut to a header, never passed on whole.
        assert_eq!(fit_udp(&req, vec![0xff; 600]).len(), 12);
        // Small answers pass unchanged.
        let small = response(ResponseCode::NoError).to_vec().unwrap();
        assert_eq!(fit_udp(&req, small.clone()), small);
    }

    #[test]
    fn names_are_compared_lowercase_and_absolute() {
        assert_eq!(name_key(&name("WWW.Site.Example")), "www.site.example.");
        assert_eq!(name_key(&name("www.site.example.")), "www.site.example.");
    }
}
