//! All cryptography of PROTOCOL.md section 2, for both sides.
//!
//! Server side: parsing and validating users' public keys (SPKI DER, RSA
//! 2048–4096 bits, e = 65537), the exact signature inputs, and RSA-PSS
//! verification. Client side: key generation, PSS signing, RSA-OAEP key
//! wrapping and AES-256-GCM message sealing. The server never calls the
//! client half; it lives here so both halves share one definition of every
//! byte string that gets signed or authenticated.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

pub const LOGIN_CONTEXT: &[u8] = b"e2ee-chat login v2";
pub const MESSAGE_CONTEXT: &[u8] = b"e2ee-chat msg v2";
pub const KEY_COMMITMENT_CONTEXT: &[u8] = b"e2ee-chat key v2";
pub const KEY_COMMITMENT_LEN: usize = 32;
pub const MIN_BITS: usize = 2048;
pub const MAX_BITS: usize = 4096;
pub const MSG_ID_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
pub const AES_KEY_LEN: usize = 32;
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

/// A user's two public keys, parsed once at registration (or first load) and
/// shared by `Arc` from then on.
#[derive(Debug)]
pub struct PublicKeys {
    pub sign_der: Vec<u8>,
    pub enc_der: Vec<u8>,
    /// The sign key's modulus and exponent for ring's RSA-PSS verifier.
    verifier: ring::signature::RsaPublicKeyComponents<Vec<u8>>,
    /// Length in bytes of the enc_key modulus: every wrapped key has exactly this length.
    pub enc_len: usize,
}

impl PublicKeys {
    pub fn parse(sign_der: &[u8], enc_der: &[u8]) -> Result<Self, CryptoError> {
        let sign = parse_public_key(sign_der)?;
        let enc = parse_public_key(enc_der)?;
        Ok(PublicKeys {
            sign_der: sign_der.to_vec(),
            enc_der: enc_der.to_vec(),
            verifier: ring::signature::RsaPublicKeyComponents {
                n: sign.n().to_bytes_be(),
                e: sign.e().to_bytes_be(),
            },
            enc_len: enc.size(),
        })
    }

    /// RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) over `msg` with the sign key.
    ///
    /// Verification uses `ring` (public-key operations there are about ten
    /// times faster than the pure-Rust bignum of the `rsa` crate, and the
    /// server verifies every login and every message); `rsa` still parses
    /// and validates keys and does all private-key work on clients.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        self.verifier
            .verify(&ring::signature::RSA_PSS_2048_8192_SHA256, msg, signature)
            .is_ok()
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.sign_der, &self.enc_der)
    }
}

/// SHA-256(sign_key DER || enc_key DER).
pub fn fingerprint(sign_der: &[u8], enc_der: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(sign_der);
    h.update(enc_der);
    h.finalize().into()
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

/// `"e2ee-chat login v2" || 0x00 || host || 0x00 || username || 0x00 || nonce`,
/// where `host` is the normalized authority the client dialed ([`normalize_host`]).
pub fn login_signature_input(host: &str, username: &str, nonce: &[u8]) -> Vec<u8> {
    let mut v =
        Vec::with_capacity(LOGIN_CONTEXT.len() + host.len() + username.len() + nonce.len() + 3);
    v.extend_from_slice(LOGIN_CONTEXT);
    v.push(0);
    v.extend_from_slice(host.as_bytes());
    v.push(0);
    v.extend_from_slice(username.as_bytes());
    v.push(0);
    v.extend_from_slice(nonce);
    v
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

/// SHA-256(`"e2ee-chat key v2" || 0x00 || K`): binds a message to one AES key.
pub fn key_commitment(aes_key: &[u8]) -> [u8; KEY_COMMITMENT_LEN] {
    let mut h = Sha256::new();
    h.update(KEY_COMMITMENT_CONTEXT);
    h.update([0u8]);
    h.update(aes_key);
    h.finalize().into()
}

/// `"e2ee-chat msg v2" || 0x00 || room_id || 0x00 || msg_id || nonce ||
/// key_commitment || ciphertext`.
pub fn message_signature_input(
    room_id: &str,
    msg_id: &[u8],
    nonce: &[u8],
    key_commitment: &[u8],
    ciphertext: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(
        MESSAGE_CONTEXT.len()
            + room_id.len()
            + msg_id.len()
            + nonce.len()
            + key_commitment.len()
            + ciphertext.len()
            + 2,
    );
    v.extend_from_slice(MESSAGE_CONTEXT);
    v.push(0);
    v.extend_from_slice(room_id.as_bytes());
    v.push(0);
    v.extend_from_slice(msg_id);
    v.extend_from_slice(nonce);
    v.extend_from_slice(key_commitment);
    v.extend_from_slice(ciphertext);
    v
}

/// AES-GCM associated data: `room_id || 0x00 || msg_id`.
pub fn message_aad(room_id: &str, msg_id: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(room_id.len() + 1 + msg_id.len());
    v.extend_from_slice(room_id.as_bytes());
    v.push(0);
    v.extend_from_slice(msg_id);
    v
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) by `key` over `msg`: v2's
/// signing key and v3's identity key sign alike. Client side only.
pub fn pss_sign(key: &RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    let key = rsa::pss::SigningKey::<Sha256>::new(key.clone());
    key.sign_with_rng(&mut OsRng, msg).to_vec()
}

/// A user's private half: both key pairs. Client side only.
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

    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.enc
            .decrypt(Oaep::new::<Sha256>(), wrapped)
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.sign_der, &self.enc_der)
    }
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) of `key` to `enc_der`.
pub fn wrap_key(enc_der: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let public = parse_public_key(enc_der)?;
    public
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), key)
        .map_err(|e| CryptoError::Other(e.to_string()))
}

pub fn seal(key: &[u8], nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption cannot fail for in-range input")
}

pub fn open(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if key.len() != AES_KEY_LEN || nonce.len() != NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Decrypt)?;
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
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
