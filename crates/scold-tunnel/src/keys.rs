//! WireGuard keys in their usual text form (standard base64 of 32 bytes).

use crate::error::TunnelError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};

/// Decodes a base64 key; `what` names it in the error (file, config key).
pub fn decode_key(text: &str, what: &str) -> Result<[u8; 32], TunnelError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| TunnelError::BadKey {
            what: what.to_string(),
            reason: format!("not base64 ({e})"),
        })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| TunnelError::BadKey {
        what: what.to_string(),
        reason: format!("{} bytes, a key has 32", bytes.len()),
    })
}

pub fn encode_key(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

pub fn private_key(text: &str, what: &str) -> Result<StaticSecret, TunnelError> {
    Ok(StaticSecret::from(decode_key(text, what)?))
}

pub fn public_key(text: &str, what: &str) -> Result<PublicKey, TunnelError> {
    Ok(PublicKey::from(decode_key(text, what)?))
}

/// The public key (base64) that belongs to a private key (base64).
pub fn public_of(private: &str) -> Result<String, TunnelError> {
    let secret = private_key(private, "private key")?;
    Ok(encode_key(PublicKey::from(&secret).as_bytes()))
}

/// A fresh private key (base64) from the kernel's random source.
pub fn generate_private() -> Result<String, TunnelError> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `key`, which lives
        // for the whole call.
        let n =
            unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TunnelError::Io(e));
        }
        filled += n as usize;
    }
    // Clamping happens inside x25519; store the raw bytes like `wg genkey` does after
    // clamping, so the text form is canonical.
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    Ok(encode_key(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_public() {
        let k = generate_private().unwrap();
        assert_eq!(k.len(), 44);
        let p = public_of(&k).unwrap();
        assert_eq!(decode_key(&p, "p").unwrap().len(), 32);
        assert_ne!(k, p);
    }

    #[test]
    fn malformed_keys() {
        assert!(decode_key("not base64!", "k").is_err());
        assert!(decode_key("AAAA", "k").is_err());
        let e = decode_key("AAAA", "proxy.private_key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.private_key") && e.contains("32"), "{e}");
    }
}
