//! The RSA and byte-level helpers both sides share (PROTOCOL.md section
//! 2): parsing a public key with the protocol's limits (SPKI DER, RSA
//! 2048–4096 bits, e = 65537), fingerprints as people read them, the login
//! `host`, RSA-PSS signing, randomness, and the profile's key pair. The
//! identity layer built on them (identity keys, device certificates, the
//! signed inputs) is `identity`; the MLS side is `mls` and `client::mls`.

use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

pub const MIN_BITS: usize = 2048;
pub const MAX_BITS: usize = 4096;
pub const MSG_ID_LEN: usize = 16;
pub const CHALLENGE_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not an RSA SubjectPublicKeyInfo: {0}")]
    BadKey(String),
    #[error("RSA modulus of {0} bits is outside 2048..=4096")]
    KeySize(usize),
    #[error("RSA public exponent must be 65537")]
    Exponent,
    #[error("decryption failed")]
    Decrypt,
    #[error("signature did not verify")]
    BadSignature,
    #[error("{0}")]
    Other(String),
}

/// Parses an SPKI DER RSA public key and applies the protocol's limits.
pub fn parse_public_key(der: &[u8]) -> Result<RsaPublicKey, CryptoError> {
    let key =
        RsaPublicKey::from_public_key_der(der).map_err(|e| CryptoError::BadKey(e.to_string()))?;
    let bits = key.n().bits();
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(CryptoError::KeySize(bits));
    }
    if key.e() != &BigUint::from(65537u32) {
        return Err(CryptoError::Exponent);
    }
    Ok(key)
}

/// 64 lowercase hex digits in groups of four, as shown to people.
pub fn fingerprint_display(fp: &[u8; 32]) -> String {
    let hex = hex::encode(fp);
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex is ascii"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `host` a login proof signs (PROTOCOL.md section 3, Account): the
/// authority in lowercase, with `:port` only when the port is not the
/// scheme's default (80 for `ws`/`http`, 443 for `wss`/`https`).
///
/// `authority` is a URL authority or a `Host` header (`Example.org:443`,
/// `[::1]:8080`); `secure` says whether the scheme is `wss`/`https`.
/// Answers `None` for something that is not a host with an optional port.
pub fn normalize_host(authority: &str, secure: bool) -> Option<String> {
    let authority = authority.trim();
    if authority.is_empty() || !authority.is_ascii() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = match authority.rfind(':') {
        // An IPv6 literal's colons are inside the brackets.
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let default = if secure { 443 } else { 80 };
    match port {
        None | Some("") => Some(host),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n == default => Some(host),
            Ok(n) => Some(format!("{host}:{n}")),
            Err(_) => None,
        },
    }
}

/// The login `host` for a `ws://` or `wss://` URL.
pub fn host_of_url(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let secure = matches!(parsed.scheme(), "wss" | "https");
    let host = parsed.host_str()?;
    // `Url` drops a port equal to the scheme's default, and lowercases.
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    normalize_host(&authority, secure)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) by `key` over `msg`: how an
/// identity key signs. Client side only.
pub fn pss_sign(key: &RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    let key = rsa::pss::SigningKey::<Sha256>::new(key.clone());
    key.sign_with_rng(&mut OsRng, msg).to_vec()
}

/// A profile's private keys, client side only: `sign` is the identity key.
/// `enc` is the second key of the profile format the page and the terminal
/// client share (it held version 2's key wrapping); nothing uses it now, and
/// it stays so that profile files keep one format.
#[derive(Clone)]
pub struct KeyPair {
    pub sign: RsaPrivateKey,
    pub enc: RsaPrivateKey,
    pub sign_der: Vec<u8>,
    pub enc_der: Vec<u8>,
}

impl KeyPair {
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        let sign =
            RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| CryptoError::Other(e.to_string()))?;
        let enc =
            RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| CryptoError::Other(e.to_string()))?;
        Self::from_keys(sign, enc)
    }

    pub fn from_pkcs8_der(sign: &[u8], enc: &[u8]) -> Result<Self, CryptoError> {
        let sign =
            RsaPrivateKey::from_pkcs8_der(sign).map_err(|e| CryptoError::BadKey(e.to_string()))?;
        let enc =
            RsaPrivateKey::from_pkcs8_der(enc).map_err(|e| CryptoError::BadKey(e.to_string()))?;
        Self::from_keys(sign, enc)
    }

    fn from_keys(sign: RsaPrivateKey, enc: RsaPrivateKey) -> Result<Self, CryptoError> {
        let der = |k: &RsaPrivateKey| {
            k.to_public_key()
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| CryptoError::Other(e.to_string()))
        };
        Ok(KeyPair {
            sign_der: der(&sign)?,
            enc_der: der(&enc)?,
            sign,
            enc,
        })
    }

    pub fn to_pkcs8_der(&self) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let der = |k: &RsaPrivateKey| {
            k.to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| CryptoError::Other(e.to_string()))
        };
        Ok((der(&self.sign)?, der(&self.enc)?))
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        pss_sign(&self.sign, msg)
    }

    /// The identity key's fingerprint (`identity::IdentityKey::fingerprint`).
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.sign_der).into()
    }
}

/// Compares two secrets without stopping at the first difference (the
/// length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize_like_the_protocol_says() {
        assert_eq!(
            normalize_host("Chat.Example.org", true).unwrap(),
            "chat.example.org"
        );
        assert_eq!(
            normalize_host("chat.example.org:443", true).unwrap(),
            "chat.example.org"
        );
        assert_eq!(
            normalize_host("chat.example.org:443", false).unwrap(),
            "chat.example.org:443"
        );
        assert_eq!(
            normalize_host("127.0.0.1:8080", false).unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(normalize_host("localhost:80", false).unwrap(), "localhost");
        assert_eq!(normalize_host("[::1]:8080", false).unwrap(), "[::1]:8080");
        assert_eq!(normalize_host("[::1]", false).unwrap(), "[::1]");
        for bad in ["", ":80", "a b", "h:x", "h:99999", "user@h", "h/p", "hé"] {
            assert!(normalize_host(bad, false).is_none(), "{bad:?}");
        }
        assert_eq!(
            host_of_url("ws://127.0.0.1:8080/ws").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            host_of_url("wss://Chat.Example.org:443/ws").unwrap(),
            "chat.example.org"
        );
        assert_eq!(
            host_of_url("ws://chat.example.org:443/ws").unwrap(),
            "chat.example.org:443"
        );
    }
}
