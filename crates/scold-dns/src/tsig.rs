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
    /// Signed outside the time window: NOTAUTH + BADTIME, signed answer.
    BadTime {
        /// Index of the key.
        key: usize,
        /// The request's MAC.
        mac: Vec<u8>,
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
                Verdict::BadTime { key: ki, mac }
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

/// Signs an encoded response to a request signed with `key` (MAC chained to `request_mac`).
/// With `error = Some(BadTime)` the Other Data carries the server's time (RFC 8945 5.2.3).
pub fn sign_response(
    response: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    oid: u16,
    now: u64,
    error: Option<TsigError>,
) -> Result<(), hickory_proto::ProtoError> {
    let signer = key.signer(DEFAULT_FUDGE);
    let other = if error == Some(TsigError::BadTime) {
        let t = now.to_be_bytes();
        t[2..8].to_vec()
    } else {
        Vec::new()
    };
    let stub = TSIG::new(
        key.algorithm.to_hickory(),
        now,
        DEFAULT_FUDGE,
        Vec::new(),
        oid,
        error,
        other,
    );
    let tbs = signer.encode_response_tbs(request_mac, response, &stub)?;
    let mac = signer
        .sign(&tbs)
        .map_err(|e| hickory_proto::ProtoError::from(e.to_string()))?;
    let rec = hickory_proto::rr::rdata::tsig::make_tsig_record(key.dns_name(), stub.set_mac(mac));
    append_record(response, &rec)
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
