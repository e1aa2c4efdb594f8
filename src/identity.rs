//! The identity layer (`docs/PROTOCOL.md` section 2): one RSA-PSS identity key
//! per user, and device certificates by which that key vouches for each
//! device's MLS signature key (Ed25519). Both the server (which checks a
//! certificate at login) and the clients (which check every leaf's
//! credential) use [`DeviceCertificate::check`], so they agree on what a
//! valid certificate is, to the byte.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::{parse_public_key, CryptoError};

/// What a device certificate's signature covers, first.
pub const DEVICE_CONTEXT: &[u8] = b"e2ee-chat device v3";
/// What a registration's proof of possession covers, first.
pub const REGISTER_CONTEXT: &[u8] = b"e2ee-chat register v3";
/// What a login signature covers, first.
pub const LOGIN_CONTEXT: &[u8] = b"e2ee-chat login v3";
pub const DEVICE_ID_LEN: usize = 16;
/// An Ed25519 public key.
pub const MLS_KEY_LEN: usize = 32;

/// A user's identity key: RSA-PSS (SHA-256, MGF1-SHA-256, salt 32), SPKI DER,
/// with the protocol's limits (2048–4096 bits, exponent 65537).
#[derive(Debug, Clone)]
pub struct IdentityKey {
    der: Vec<u8>,
    verifier: ring::signature::RsaPublicKeyComponents<Vec<u8>>,
}

impl IdentityKey {
    pub fn parse(der: &[u8]) -> Result<Self, CryptoError> {
        let key = parse_public_key(der)?;
        use rsa::traits::PublicKeyParts;
        Ok(IdentityKey {
            der: der.to_vec(),
            verifier: ring::signature::RsaPublicKeyComponents {
                n: key.n().to_bytes_be(),
                e: key.e().to_bytes_be(),
            },
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the key's DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// Whether `signature` is this key's RSA-PSS signature over `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        self.verifier
            .verify(&ring::signature::RSA_PSS_2048_8192_SHA256, msg, signature)
            .is_ok()
    }
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p);
    }
    out
}

/// `"e2ee-chat register v3" || 0x00 || host || 0x00 || username`.
pub fn register_proof_input(host: &str, username: &str) -> Vec<u8> {
    joined(&[REGISTER_CONTEXT, host.as_bytes(), username.as_bytes()])
}

/// `"e2ee-chat login v3" || 0x00 || host || 0x00 || username || 0x00 || nonce`.
pub fn login_signature_input(host: &str, username: &str, nonce: &[u8]) -> Vec<u8> {
    joined(&[LOGIN_CONTEXT, host.as_bytes(), username.as_bytes(), nonce])
}

/// `"e2ee-chat device v3" || 0x00 || user || 0x00 || device || mls_key`.
pub fn device_signature_input(user: &str, device: &[u8], mls_key: &[u8]) -> Vec<u8> {
    let mut out = joined(&[DEVICE_CONTEXT, user.as_bytes(), device]);
    out.extend_from_slice(mls_key);
    out
}

/// `"r-"` and the 32 lowercase hex digits of the group's 16-byte id.
pub fn room_id_of_group_id(group_id: &[u8]) -> String {
    format!("r-{}", hex::encode(group_id))
}

/// Why a device certificate is refused (`invalid_device`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a device certificate in its exact encoding")]
    Encoding,
    #[error("the certificate is for another user")]
    OtherUser,
    #[error("the device id is not 16 bytes or the MLS key not 32")]
    Lengths,
    #[error("the certificate's signature does not verify with the identity key")]
    Signature,
}

/// A device certificate: `user`'s identity key vouches that `mls_key` is the
/// signature key of `device`. Its bytes are the BasicCredential identity of
/// the device's MLS leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    pub user: String,
    pub device: Vec<u8>,
    pub mls_key: Vec<u8>,
    pub sig: Vec<u8>,
}

/// The one encoding: a map of exactly `sig`, `user`, `device`, `mls_key`, in
/// that order (RFC 8949 §4.2.1: shorter keys first), minimal lengths.
#[derive(Serialize)]
struct Encoded<'a> {
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
    user: &'a str,
    #[serde(with = "serde_bytes")]
    device: &'a [u8],
    #[serde(with = "serde_bytes")]
    mls_key: &'a [u8],
}

impl DeviceCertificate {
    /// Certifies `mls_key` for `device` with the identity key's `sign`.
    pub fn issue(
        user: &str,
        device: &[u8],
        mls_key: &[u8],
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Self {
        DeviceCertificate {
            user: user.to_owned(),
            device: device.to_vec(),
            mls_key: mls_key.to_vec(),
            sig: sign(&device_signature_input(user, device, mls_key)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.sig.len() + self.user.len() + 80);
        ciborium::into_writer(
            &Encoded {
                sig: &self.sig,
                user: &self.user,
                device: &self.device,
                mls_key: &self.mls_key,
            },
            &mut out,
        )
        .expect("writing to a Vec cannot fail");
        out
    }

    /// Reads a certificate that is in its exact encoding (the same keys, in
    /// order, of the right types, minimal lengths, nothing after it) and
    /// nothing else.
    pub fn decode(bytes: &[u8]) -> Result<Self, CertError> {
        use ciborium::Value;
        let value: Value = ciborium::from_reader(bytes).map_err(|_| CertError::Encoding)?;
        let Value::Map(entries) = value else {
            return Err(CertError::Encoding);
        };
        let field = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
                .ok_or(CertError::Encoding)
        };
        let bytes_of = |name: &str| field(name)?.as_bytes().cloned().ok_or(CertError::Encoding);
        let cert = DeviceCertificate {
            user: field("user")?
                .as_text()
                .ok_or(CertError::Encoding)?
                .to_owned(),
            device: bytes_of("device")?,
            mls_key: bytes_of("mls_key")?,
            sig: bytes_of("sig")?,
        };
        // Order, extra keys, non-minimal lengths and trailing bytes all make
        // the bytes differ from the one encoding.
        if cert.encode() != bytes {
            return Err(CertError::Encoding);
        }
        Ok(cert)
    }

    /// The check of PROTOCOL.md section 3 (`prove`) and section 7 (a
    /// leaf's credential): the exact encoding, for `username`, the right
    /// lengths, signed by `identity`.
    pub fn check(bytes: &[u8], username: &str, identity: &IdentityKey) -> Result<Self, CertError> {
        let cert = Self::check_unsigned(bytes, username)?;
        cert.check_signature(identity)?;
        Ok(cert)
    }

    /// [`DeviceCertificate::check`] but the signature: for a certificate the
    /// server already verified (a known device's), which it then compares.
    pub fn check_unsigned(bytes: &[u8], username: &str) -> Result<Self, CertError> {
        let cert = Self::decode(bytes)?;
        if cert.user != username {
            return Err(CertError::OtherUser);
        }
        if cert.device.len() != DEVICE_ID_LEN || cert.mls_key.len() != MLS_KEY_LEN {
            return Err(CertError::Lengths);
        }
        Ok(cert)
    }

    /// Whether `identity` signed this certificate.
    pub fn check_signature(&self, identity: &IdentityKey) -> Result<(), CertError> {
        let input = device_signature_input(&self.user, &self.device, &self.mls_key);
        if identity.verify(&input, &self.sig) {
            Ok(())
        } else {
            Err(CertError::Signature)
        }
    }
}
