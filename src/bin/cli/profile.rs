//! A user's profile directory: `profile.toml` (username, server), the
//! private keys as PKCS#8 PEM (mode 0600, optionally passphrase-encrypted
//! with scrypt + AES-256-CBC), and `device.db`, this device's MLS state and
//! the identity keys it pinned (`client::device_store`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use e2ee_chat::crypto::KeyPair;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};

pub const PASSPHRASE_ENV: &str = "E2EE_CHAT_PASSPHRASE";
const SIGN_FILE: &str = "sign_key.pem";
const ENC_FILE: &str = "enc_key.pem";

pub type CliResult<T> = Result<T, String>;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ProfileConfig {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

pub struct Profile {
    pub dir: PathBuf,
    pub config: ProfileConfig,
}

/// The default profile directory: the platform's config dir for e2ee-chat.
pub fn default_dir() -> CliResult<PathBuf> {
    directories::ProjectDirs::from("", "", "e2ee-chat")
        .map(|d| d.config_dir().to_path_buf())
        .ok_or_else(|| "no home directory; pass --profile DIR".to_string())
}

fn write_private(path: &Path, contents: &[u8]) -> CliResult<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.write_all(contents)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn pem_of(key: &RsaPrivateKey, passphrase: Option<&str>) -> CliResult<String> {
    let pem = match passphrase {
        Some(pw) => key
            .to_pkcs8_encrypted_pem(rand::rngs::OsRng, pw.as_bytes(), LineEnding::LF)
            .map_err(|e| format!("encrypting the key: {e}"))?,
        None => key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the key: {e}"))?,
    };
    Ok(pem.to_string())
}

fn key_from_pem(pem: &str, passphrase: Option<&str>, path: &Path) -> CliResult<RsaPrivateKey> {
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        let pw = passphrase.ok_or_else(|| {
            format!(
                "{} is passphrase-protected: set {PASSPHRASE_ENV} or run in a terminal to be asked",
                path.display()
            )
        })?;
        RsaPrivateKey::from_pkcs8_encrypted_pem(pem, pw.as_bytes()).map_err(|_| {
            format!(
                "{}: wrong passphrase (or a damaged key file)",
                path.display()
            )
        })
    } else {
        RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The passphrase from the environment, else a prompt when `ask` and a terminal.
pub fn passphrase(ask: bool, confirm: bool) -> CliResult<Option<String>> {
    if let Ok(pw) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Some(pw));
    }
    if !ask {
        return Ok(None);
    }
    let pw = rpassword::prompt_password("passphrase: ")
        .map_err(|e| format!("reading the passphrase: {e}"))?;
    if confirm {
        let again = rpassword::prompt_password("again: ")
            .map_err(|e| format!("reading the passphrase: {e}"))?;
        if again != pw {
            return Err("the passphrases differ".into());
        }
    }
    if pw.is_empty() {
        return Err("an empty passphrase is not a passphrase".into());
    }
    Ok(Some(pw))
}

impl Profile {
    pub fn open(dir: &Path) -> CliResult<Profile> {
        let path = dir.join("profile.toml");
        let text = fs::read_to_string(&path).map_err(|_| {
            format!(
                "no profile at {} (run `e2ee-chat keygen --user NAME` first)",
                dir.display()
            )
        })?;
        let config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Profile {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Makes a new profile with fresh keys; refuses to overwrite keys unless `force`.
    pub fn create(
        dir: &Path,
        config: ProfileConfig,
        keys: &KeyPair,
        passphrase: Option<&str>,
        force: bool,
    ) -> CliResult<Profile> {
        if !force && (dir.join(SIGN_FILE).exists() || dir.join(ENC_FILE).exists()) {
            return Err(format!(
                "{} already holds keys; pass --force to replace them (the old identity is lost)",
                dir.display()
            ));
        }
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        write_private(
            &dir.join(SIGN_FILE),
            pem_of(&keys.sign, passphrase)?.as_bytes(),
        )?;
        write_private(
            &dir.join(ENC_FILE),
            pem_of(&keys.enc, passphrase)?.as_bytes(),
        )?;
        let profile = Profile {
            dir: dir.to_path_buf(),
            config,
        };
        profile.save_config()?;
        Ok(profile)
    }

    pub fn save_config(&self) -> CliResult<()> {
        let text = toml::to_string(&self.config).map_err(|e| e.to_string())?;
        write_private(&self.dir.join("profile.toml"), text.as_bytes())
    }

    pub fn keys_encrypted(&self) -> bool {
        fs::read_to_string(self.dir.join(SIGN_FILE))
            .is_ok_and(|p| p.contains("ENCRYPTED PRIVATE KEY"))
    }

    /// Loads both private keys, asking for the passphrase if they need one.
    pub fn keys(&self) -> CliResult<KeyPair> {
        let pw = passphrase(
            self.keys_encrypted() && std::io::IsTerminal::is_terminal(&std::io::stdin()),
            false,
        )?;
        let load = |name: &str| {
            let path = self.dir.join(name);
            let pem = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            key_from_pem(&pem, pw.as_deref(), &path)
        };
        let (sign, enc) = (load(SIGN_FILE)?, load(ENC_FILE)?);
        let der = |k: &RsaPrivateKey| {
            k.to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| e.to_string())
        };
        KeyPair::from_pkcs8_der(&der(&sign)?, &der(&enc)?).map_err(|e| e.to_string())
    }
}
