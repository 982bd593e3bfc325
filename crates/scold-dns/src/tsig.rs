//! TSIG keys (RFC 8945) and the server-side verification steps.
//!
//! The MAC computation is hickory-proto's; what is here is the key type the rest of
//! SCOLD passes around, its text form (`hmac-sha256:name:base64`, as `nsupdate -y`
//! takes it), and the RFC 8945 section 5.2 checks in the order the RFC gives, each
//! mapped to the error the RFC prescribes.

use std::fmt;
use std::str::FromStr;

use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HAlg, TsigError, TSIG};
use hickory_proto::rr::TSigner;
use hickory_proto::rr::{Name, Record};

/// Largest clock skew allowed by default (RFC 8945 section 10 recommends 300 s).
pub const DEFAULT_FUDGE: u16 = 300;

/// A supported TSIG algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TsigAlgorithm {
    /// hmac-sha256 (RFC 4635), mandatory to implement.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// hmac-sha512.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl TsigAlgorithm {
    /// hickory-proto's value.
    pub fn to_hickory(self) -> HAlg {
        match self {
            Self::HmacSha256 => HAlg::HmacSha256,
            Self::HmacSha512 => HAlg::HmacSha512,
        }
    }

    /// The algorithm name as BIND writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }
}

impl FromStr for TsigAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_lowercase().trim_end_matches('.') {
            "hmac-sha256" => Ok(Self::HmacSha256),
            "hmac-sha512" => Ok(Self::HmacSha512),
            other => Err(KeyError::Algorithm(other.to_string())),
        }
    }
}

/// Why a key description is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `algorithm:name:base64`.
    #[error("TSIG key `{0}` is not of the form `hmac-sha256:keyname:base64secret`")]
    Form(String),
    /// Unsupported algorithm.
    #[error("TSIG algorithm `{0}` is not supported: use hmac-sha256 or hmac-sha512")]
    Algorithm(String),
    /// Secret is not base64.
    #[error("the secret of TSIG key `{0}` is not valid base64 (generate one with `tsig-keygen` or `openssl rand -base64 32`)")]
    Secret(String),
    /// Bad key name.
    #[error("`{0}` is not a valid TSIG key name")]
    Name(String),
}

/// A shared TSIG key.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// Key name (a domain name, e.g. `coordinator.example.com`).
    pub name: String,
    /// MAC algorithm.
    pub algorithm: TsigAlgorithm,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(
            f,
            "TsigKey({}:{}:<secret>)",
            self.algorithm.as_str(),
            self.name
        )
    }
}

impl TsigKey {
    /// Builds a key from its parts, decoding a base64 secret.
    pub fn new(name: &str, algorithm: TsigAlgorithm, secret_b64: &str) -> Result<Self, KeyError> {
        let secret = data_encoding::BASE64
            .decode(secret_b64.trim().as_bytes())
            .map_err(|_| KeyError::Secret(name.to_string()))?;
        if secret.is_empty() {
            return Err(KeyError::Secret(name.to_string()));
        }
        Name::from_ascii(name).map_err(|_| KeyError::Name(name.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            algorithm,
            secret,
        })
    }

    /// The key name as a fully qualified, lower-case DNS name.
    pub fn dns_name(&self) -> Name {
        let mut n = Name::from_ascii(&self.name)
            .unwrap_or_else(|_| Name::root())
            .to_lowercase();
        n.set_fqdn(true);
        n
    }

    /// hickory-proto's signer for this key.
    pub fn signer(&self, fudge: u16) -> TSigner {
        TSigner::new(
            self.secret.clone(),
            self.algorithm.to_hickory(),
            self.dns_name(),
            fudge,
        )
        .expect("hmac-sha256 and hmac-sha512 are supported by hickory-proto's ring backend")
    }

    /// The `algorithm:name:base64` text form.
    pub fn to_spec(&self) -> String {
        format!(
            "{}:{}:{}",
            self.algorithm.as_str(),
            self.name,
            data_encoding::BASE64.encode(&self.secret)
        )
    }
}

impl FromStr for TsigKey {
    type Err = KeyError;
    /// Parses `hmac-sha256:name:base64` (the `nsupdate -y` form). `name:base64` alone means
    /// hmac-sha256.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let parts: Vec<&str> = s.splitn(3, ':').collect();
        match parts.as_slice() {
            [alg, name, secret] => TsigKey::new(name, alg.parse()?, secret),
            [name, secret] => TsigKey::new(name, TsigAlgorithm::HmacSha256, secret),
            _ => Err(KeyError::Form(
                s.split(':').take(2).collect::<Vec<_>>().join(":"),
            )),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The verdict on a signed request.
pub enum Verdict {
    /// Signature valid and in time: the key, and the request MAC to chain the response.
    Ok {
        /// Index of the key in the key list.
        key: usize,
        /// The request's MAC.
        mac: Vec<u8>,
    },
    /// No key of that name and algorithm: NOTAUTH + BADKEY, unsigned answer.
    BadKey {
        /// The key name the request used.
        name: Name,
    },
    /// MAC does not verify: NOTAUTH + BADSIG, unsigned answer.
    BadSig {
        /// Index of the key.
        key: usize,
    },
    /// Signed outside the time window: NOTAUTH + BADTIME, signed answer that carries
    /// the request's own Time Signed and Fudge (see [`sign_badtime_response`]).
    BadTime {
        /// Index of the key.
        key: usize,
        /// The request's MAC.
        mac: Vec<u8>,
        /// The request's Time Signed (the client's clock).
        time: u64,
        /// The request's Fudge.
        fudge: u16,
    },
    /// The TSIG record itself is malformed: FORMERR.
    Malformed,
}

/// Verifies a request that carries a TSIG record (RFC 8945 section 5.2), at time `now`.
pub fn verify_request(raw: &[u8], tsig: &Record<TSIG>, keys: &[TsigKey], now: u64) -> Verdict {
    let name = tsig.name.to_lowercase();
    let Some(ki) = keys
        .iter()
        .position(|k| k.dns_name() == name && k.algorithm.to_hickory() == tsig.data.algorithm)
    else {
        return Verdict::BadKey {
            name: tsig.name.clone(),
        };
    };
    let signer = keys[ki].signer(tsig.data.fudge);
    match signer.verify_message_byte(raw, None, true) {
        Ok((mac, time, _)) => {
            let fudge = tsig.data.fudge as u64;
            if now.abs_diff(time) > fudge {
                Verdict::BadTime {
                    key: ki,
                    mac,
                    time,
                    fudge: tsig.data.fudge,
                }
            } else {
                Verdict::Ok { key: ki, mac }
            }
        }
        Err(_) => {
            if tsig.data.mac.is_empty() {
                Verdict::Malformed
            } else {
                Verdict::BadSig { key: ki }
            }
        }
    }
}

/// Signs an encoded response to a request signed with `key` (MAC chained to
/// `request_mac`), with our clock `now` as Time Signed.
pub fn sign_response(
    response: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    oid: u16,
    now: u64,
) -> Result<(), hickory_proto::ProtoError> {
    let stub = TSIG::new(
        key.algorithm.to_hickory(),
        now,
        DEFAULT_FUDGE,
        Vec::new(),
        oid,
        None,
        Vec::new(),
    );
    sign_with(response, key, request_mac, stub).map(drop)
}

/// Signs the BADTIME answer to a request whose Time Signed is outside its fudge
/// (RFC 8945 section 5.2.3): Time Signed and Fudge are the request's own, so the
/// client can check the answer against the clock it signed with (were it our time,
/// the skewed client would find the answer out of its window too); our clock goes in
/// Other Data as a 48-bit number, Other Len 6.
pub fn sign_badtime_response(
    response: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    oid: u16,
    request_time: u64,
    request_fudge: u16,
    now: u64,
) -> Result<(), hickory_proto::ProtoError> {
    let stub = TSIG::new(
        key.algorithm.to_hickory(),
        request_time,
        request_fudge,
        Vec::new(),
        oid,
        Some(TsigError::BadTime),
        now.to_be_bytes()[2..8].to_vec(),
    );
    sign_with(response, key, request_mac, stub).map(drop)
}

/// Like [`sign_response`], and returns the MAC, which the next message of a
/// multi-message answer chains to.
pub fn sign_response_mac(
    response: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    oid: u16,
    now: u64,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let stub = TSIG::new(
        key.algorithm.to_hickory(),
        now,
        DEFAULT_FUDGE,
        Vec::new(),
        oid,
        None,
        Vec::new(),
    );
    sign_with(response, key, request_mac, stub)
}

/// Signs a message after the first of a multi-message answer (RFC 8945 section
/// 5.3.1): the MAC covers the previous message's MAC, this message without its TSIG
/// record, and only the timers (Time Signed, Fudge). Returns the MAC.
pub fn sign_subsequent(
    msg: &mut Vec<u8>,
    key: &TsigKey,
    prev_mac: &[u8],
    oid: u16,
    now: u64,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut tbs = Vec::with_capacity(prev_mac.len() + msg.len() + 10);
    tbs.extend_from_slice(&(prev_mac.len() as u16).to_be_bytes());
    tbs.extend_from_slice(prev_mac);
    tbs.extend_from_slice(msg);
    tbs.extend_from_slice(&now.to_be_bytes()[2..8]);
    tbs.extend_from_slice(&DEFAULT_FUDGE.to_be_bytes());
    let mac = key
        .signer(DEFAULT_FUDGE)
        .sign(&tbs)
        .map_err(|e| hickory_proto::ProtoError::from(e.to_string()))?;
    let stub = TSIG::new(
        key.algorithm.to_hickory(),
        now,
        DEFAULT_FUDGE,
        mac.clone(),
        oid,
        None,
        Vec::new(),
    );
    let rec = hickory_proto::rr::rdata::tsig::make_tsig_record(key.dns_name(), stub);
    append_record(msg, &rec)?;
    Ok(mac)
}

fn sign_with(
    response: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    stub: TSIG,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let signer = key.signer(DEFAULT_FUDGE);
    let tbs = signer.encode_response_tbs(request_mac, response, &stub)?;
    let mac = signer
        .sign(&tbs)
        .map_err(|e| hickory_proto::ProtoError::from(e.to_string()))?;
    let rec =
        hickory_proto::rr::rdata::tsig::make_tsig_record(key.dns_name(), stub.set_mac(mac.clone()));
    append_record(response, &rec)?;
    Ok(mac)
}

/// Appends an unsigned TSIG record carrying `error` (BADKEY, BADSIG answers).
pub fn append_unsigned_error(
    response: &mut Vec<u8>,
    key_name: &Name,
    algorithm: HAlg,
    oid: u16,
    now: u64,
    error: TsigError,
) -> Result<(), hickory_proto::ProtoError> {
    let t = TSIG::new(
        algorithm,
        now,
        DEFAULT_FUDGE,
        Vec::new(),
        oid,
        Some(error),
        Vec::new(),
    );
    let rec = hickory_proto::rr::rdata::tsig::make_tsig_record(key_name.clone(), t);
    append_record(response, &rec)
}

fn append_record(
    response: &mut Vec<u8>,
    rec: &Record<TSIG>,
) -> Result<(), hickory_proto::ProtoError> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    let mut tail = Vec::with_capacity(128);
    {
        let mut enc = BinEncoder::new(&mut tail);
        enc.set_name_encoding(hickory_proto::serialize::binary::NameEncoding::Uncompressed);
        rec.emit(&mut enc)?;
    }
    response.extend_from_slice(&tail);
    let ar = u16::from_be_bytes([response[10], response[11]]).saturating_add(1);
    response[10..12].copy_from_slice(&ar.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nsupdate_form() {
        let k: TsigKey = "hmac-sha256:coord.example.:c2VjcmV0c2VjcmV0"
            .parse()
            .unwrap();
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(k.secret, b"secretsecret");
        assert_eq!(k.dns_name().to_ascii(), "coord.example.");
        let k2: TsigKey = k.to_spec().parse().unwrap();
        assert_eq!(k, k2);
        let k: TsigKey = "HMAC-SHA512:k:c2VjcmV0".parse().unwrap();
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha512);
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
    }

    /// Where the fields of the TSIG RDATA sit in a record appended at `start`.
    struct TsigWire {
        time: u64,
        fudge: u16,
        mac: Vec<u8>,
        oid: u16,
        error: u16,
        other: Vec<u8>,
    }

    /// Reads the TSIG record written at `start` byte by byte (owner and algorithm
    /// uncompressed, as RFC 8945 section 4.2 writes them), checking its fixed fields.
    fn tsig_wire(msg: &[u8], start: usize, key: &TsigKey) -> TsigWire {
        let owner = crate::wire::name_wire(&key.dns_name());
        let mut p = start;
        assert_eq!(
            &msg[p..p + owner.len()],
            &owner[..],
            "owner is the key name"
        );
        p += owner.len();
        assert_eq!(
            &msg[p..p + 8],
            &[0, 250, 0, 255, 0, 0, 0, 0],
            "TSIG, ANY, TTL 0"
        );
        p += 8;
        let rdlen = u16::from_be_bytes([msg[p], msg[p + 1]]) as usize;
        p += 2;
        assert_eq!(p + rdlen, msg.len(), "the TSIG record is the last thing");
        let alg = b"\x0bhmac-sha256\x00";
        assert_eq!(&msg[p..p + alg.len()], alg);
        p += alg.len();
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&msg[p..p + 6]);
        let time = u64::from_be_bytes(t);
        let fudge = u16::from_be_bytes([msg[p + 6], msg[p + 7]]);
        let mac_len = u16::from_be_bytes([msg[p + 8], msg[p + 9]]) as usize;
        p += 10;
        let mac = msg[p..p + mac_len].to_vec();
        p += mac_len;
        let oid = u16::from_be_bytes([msg[p], msg[p + 1]]);
        let error = u16::from_be_bytes([msg[p + 2], msg[p + 3]]);
        let other_len = u16::from_be_bytes([msg[p + 4], msg[p + 5]]) as usize;
        p += 6;
        let other = msg[p..p + other_len].to_vec();
        assert_eq!(p + other_len, msg.len());
        TsigWire {
            time,
            fudge,
            mac,
            oid,
            error,
            other,
        }
    }

    /// RFC 8945 section 5.2.3: the BADTIME answer carries the client's Time Signed and
    /// Fudge, our clock in a 6-byte Other Data, and a MAC that the client's own
    /// verifier (hickory-proto's, which checks the time against the request's) accepts.
    #[test]
    fn badtime_answer_carries_the_clients_time_and_verifies() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::RecordType;
        let key: TsigKey = "hmac-sha256:coord.example.:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
            .parse()
            .unwrap();
        let now = 1_700_000_000u64;
        for skew in [-3600i64, 301, 86_400] {
            let client_time = (now as i64 + skew) as u64;
            let mut m = Message::new(0x5151, MessageType::Query, OpCode::Update);
            m.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::SOA,
            ));
            let mut verifier = m
                .finalize(&key.signer(120), client_time)
                .unwrap()
                .expect("a verifier for the answer");
            let req = m.to_vec().unwrap();
            let sig = Message::from_vec(&req).unwrap().signature.unwrap();
            let Verdict::BadTime {
                key: ki,
                mac,
                time,
                fudge,
            } = verify_request(&req, &sig, std::slice::from_ref(&key), now)
            else {
                panic!("a request {skew} s off is not BADTIME");
            };
            assert_eq!((ki, time, fudge), (0, client_time, 120));
            let mut resp = Message::response(0x5151, OpCode::Update);
            resp.metadata.response_code = hickory_proto::op::ResponseCode::NotAuth;
            let mut out = resp.to_vec().unwrap();
            let start = out.len();
            sign_badtime_response(&mut out, &key, &mac, 0x5151, time, fudge, now).unwrap();
            let w = tsig_wire(&out, start, &key);
            assert_eq!(w.time, client_time, "Time Signed is the client's");
            assert_eq!(w.fudge, 120, "Fudge is the client's");
            assert_eq!(w.oid, 0x5151);
            assert_eq!(w.error, 18, "BADTIME");
            assert_eq!(
                w.other,
                now.to_be_bytes()[2..].to_vec(),
                "our time, 6 bytes"
            );
            assert_eq!(w.mac.len(), 32);
            verifier
                .verify(&out)
                .unwrap_or_else(|e| panic!("the client cannot verify the BADTIME answer: {e}"));
        }
    }

    #[test]
    fn refuses_bad_keys() {
        assert!(matches!(
            "hmac-md5:k:c2VjcmV0".parse::<TsigKey>(),
            Err(KeyError::Algorithm(_))
        ));
        assert!(matches!(
            "hmac-sha256:k:%%%".parse::<TsigKey>(),
            Err(KeyError::Secret(_))
        ));
        assert!(matches!(
            "justone".parse::<TsigKey>(),
            Err(KeyError::Form(_))
        ));
        assert!(matches!(
            "hmac-sha256:k:".parse::<TsigKey>(),
            Err(KeyError::Secret(_))
        ));
    }
}
