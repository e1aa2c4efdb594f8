//! The portable profile file the web client exports and imports
//! (`web/src/keystore.js`): JSON with the username, the server, both public
//! keys, and both private keys as PKCS#8 DER sealed with AES-256-GCM under
//! PBKDF2-SHA-256 of a passphrase. The associated data binds each sealed key
//! to the username and to its role, so keys cannot be swapped between files
//! or roles. One person can so use the same identity in a browser and here.
//! The `export-profile` and `import-profile` commands are at the end.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2ee_chat::crypto::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::profile::{self, CliResult, Profile, ProfileConfig};
use crate::Cli;
use e2ee_chat::client::display::escape;
use e2ee_chat::crypto::fingerprint_display;

pub const FORMAT: &str = "e2ee-chat-profile";
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA-256; the web client uses the same.
pub const ITERATIONS: u32 = 600_000;
/// A hostile file must not make an import run for hours, nor be weak.
const ITERATIONS_RANGE: std::ops::RangeInclusive<u32> = 100_000..=10_000_000;
/// Profile files are about 4 KiB; refuse anything much larger unread.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
pub struct ProfileFile {
    pub format: String,
    pub version: u32,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub kdf: Kdf,
    pub cipher: String,
    pub sign_key: SealedKey,
    pub enc_key: SealedKey,
}

#[derive(Serialize, Deserialize)]
pub struct Kdf {
    pub name: String,
    pub hash: String,
    pub iterations: u32,
    pub salt: String,
}

#[derive(Serialize, Deserialize)]
pub struct SealedKey {
    /// SubjectPublicKeyInfo DER, base64.
    pub public: String,
    /// The 12-byte AES-GCM nonce, base64.
    pub iv: String,
    /// AES-GCM(PKCS#8 DER) with its tag, base64.
    pub wrapped: String,
}

fn aad(username: &str, which: &str) -> Vec<u8> {
    format!("e2ee-chat profile v1\0{username}\0{which}").into_bytes()
}

fn derive(passphrase: &str, salt: &[u8], iterations: u32) -> Aes256Gcm {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(passphrase.as_bytes(), salt, iterations, &mut key);
    Aes256Gcm::new_from_slice(&key).expect("32-byte key")
}

/// Seals a profile's keys under `passphrase`.
pub fn export(
    username: &str,
    server: Option<String>,
    keys: &KeyPair,
    passphrase: &str,
) -> CliResult<ProfileFile> {
    let salt: [u8; 16] = e2ee_chat::crypto::random_bytes();
    let cipher = derive(passphrase, &salt, ITERATIONS);
    let (sign_pkcs8, enc_pkcs8) = keys.to_pkcs8_der().map_err(|e| e.to_string())?;
    let seal = |der: &[u8], public: &[u8], which: &str| {
        let iv: [u8; 12] = e2ee_chat::crypto::random_bytes();
        let aad = aad(username, which);
        let wrapped = cipher
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: der,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for in-range input");
        SealedKey {
            public: B64.encode(public),
            iv: B64.encode(iv),
            wrapped: B64.encode(wrapped),
        }
    };
    Ok(ProfileFile {
        format: FORMAT.into(),
        version: 1,
        username: username.into(),
        server,
        kdf: Kdf {
            name: "PBKDF2".into(),
            hash: "SHA-256".into(),
            iterations: ITERATIONS,
            salt: B64.encode(salt),
        },
        cipher: "AES-256-GCM".into(),
        sign_key: seal(&sign_pkcs8, &keys.sign_der, "sign_key"),
        enc_key: seal(&enc_pkcs8, &keys.enc_der, "enc_key"),
    })
}

/// Checks a file's shape and opens its keys; a wrong passphrase or a changed
/// byte fails the AES-GCM tag, and the public keys must match the private ones.
pub fn import(text: &str, passphrase: &str) -> CliResult<(ProfileFile, KeyPair)> {
    let file: ProfileFile =
        serde_json::from_str(text).map_err(|e| format!("not an e2ee-chat profile file: {e}"))?;
    if file.format != FORMAT {
        return Err("not an e2ee-chat profile file".into());
    }
    if file.version != 1 {
        return Err(format!(
            "profile file version {} is not supported",
            file.version
        ));
    }
    e2ee_chat::validate::username(&file.username)
        .map_err(|_| "the profile's username is not valid".to_string())?;
    if file.kdf.name != "PBKDF2" || file.kdf.hash != "SHA-256" || file.cipher != "AES-256-GCM" {
        return Err("the profile uses an unknown key derivation or cipher".into());
    }
    if !ITERATIONS_RANGE.contains(&file.kdf.iterations) {
        return Err(format!(
            "the profile's PBKDF2 iteration count {} is outside {ITERATIONS_RANGE:?}",
            file.kdf.iterations
        ));
    }
    let b64 = |s: &str, what: &str| {
        B64.decode(s)
            .map_err(|_| format!("the profile's {what} is not base64"))
    };
    let cipher = derive(
        passphrase,
        &b64(&file.kdf.salt, "salt")?,
        file.kdf.iterations,
    );
    let open = |k: &SealedKey, which: &str| -> CliResult<Vec<u8>> {
        let iv = b64(&k.iv, which)?;
        if iv.len() != 12 {
            return Err(format!("the profile's {which} nonce is not 12 bytes"));
        }
        cipher
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &b64(&k.wrapped, which)?,
                    aad: &aad(&file.username, which),
                },
            )
            .map_err(|_| "wrong passphrase (or a damaged profile file)".to_string())
    };
    let keys = KeyPair::from_pkcs8_der(
        &open(&file.sign_key, "sign_key")?,
        &open(&file.enc_key, "enc_key")?,
    )
    .map_err(|e| format!("the profile's keys do not parse: {e}"))?;
    if keys.sign_der != b64(&file.sign_key.public, "sign_key")?
        || keys.enc_der != b64(&file.enc_key.public, "enc_key")?
    {
        return Err("the profile's public keys do not match its private keys".into());
    }
    Ok((file, keys))
}

pub fn export_profile(
    profile: &Profile,
    url: &str,
    path: &std::path::Path,
    force: bool,
) -> CliResult<()> {
    if !force && path.exists() {
        return Err(format!(
            "{} exists: pick another name, or --force to replace it",
            path.display()
        ));
    }
    let keys = profile.keys()?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let pw = profile::passphrase(interactive, !profile.keys_encrypted())?.ok_or_else(|| {
        format!(
            "a profile file needs a passphrase: set {}",
            profile::PASSPHRASE_ENV
        )
    })?;
    let file = export(&profile.config.username, Some(url.to_owned()), &keys, &pw)?;
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())? + "\n";
    write_private(path, text.as_bytes(), force).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "profile of {} written to {} (import it in the web client, or with `e2ee-chat import-profile`)",
        profile.config.username,
        path.display()
    );
    Ok(())
}

pub fn import_profile(
    cli: &Cli,
    dir: &std::path::Path,
    path: &std::path::Path,
    force: bool,
) -> CliResult<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{} is too large for a profile file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let pw = profile::passphrase(interactive, false)?.ok_or_else(|| {
        format!(
            "the profile file's passphrase is needed: set {}",
            profile::PASSPHRASE_ENV
        )
    })?;
    let (file, keys) = import(&text, &pw)?;
    // The file's server is taken only when --server names none, and the
    // user is told which it is: a file could point at any server.
    let server = match (&cli.server, &file.server) {
        (Some(given), _) => Some(given.clone()),
        (None, Some(named)) => {
            let named = escape(named);
            println!("server: {named} (named by the file; use --server to choose another)");
            file.server.clone()
        }
        (None, None) => None,
    };
    let config = ProfileConfig {
        username: file.username.clone(),
        server,
    };
    let p = Profile::create(dir, config, &keys, Some(&pw), force)?;
    println!(
        "profile of {} imported into {}",
        file.username,
        p.dir.display()
    );
    println!("fingerprint: {}", fingerprint_display(&keys.fingerprint()));
    Ok(())
}

/// Writes a file only its owner can read (0600 on Unix): a profile file
/// holds the encrypted private keys. Without `replace`, an existing file is
/// never touched.
fn write_private(path: &std::path::Path, data: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    #[cfg(unix)]
    {
        // A replaced file keeps its old mode unless set again.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.sync_all()
}
