//! Connections: TLS as `sslmode` asks, and the pools (one connection for
//! the writer, a few with a statement timeout for reads).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_tokio_postgres::{config_no_verify, MakeRustlsConnect};

use crate::store::StoreError;

/// TLS as libpq's `sslmode` says: `prefer` (the default) uses it when the
/// server offers it, `require` (Heroku Postgres) insists on it, `disable`
/// never; like libpq's `require`, those do not verify the certificate
/// (managed databases present certificates of their own CA).
/// `verify-full` (and `verify-ca`, checked as strictly) insists on TLS and
/// verifies the certificate and the host name against the CA certificates
/// in the PEM file `sslrootcert` names. tokio-postgres parses neither, so
/// they are taken out of the URL here.
pub(super) fn tls_for(url: &str) -> Result<(String, MakeRustlsConnect), StoreError> {
    let bad = |why: String| StoreError::Unavailable(format!("store.url: {why}"));
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok((url.to_owned(), MakeRustlsConnect::new(config_no_verify())));
    };
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let mode = pairs
        .iter()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.as_str());
    if !matches!(mode, Some("verify-full" | "verify-ca")) {
        return Ok((url.to_owned(), MakeRustlsConnect::new(config_no_verify())));
    }
    let root = pairs
        .iter()
        .find(|(k, _)| k == "sslrootcert")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| bad("sslmode=verify-full needs sslrootcert=/path/to/ca.pem".into()))?;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&root)
        .map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("sslrootcert {root}: no certificate in it")));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let kept: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .chain([("sslmode".to_owned(), "require".to_owned())])
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    Ok((parsed.to_string(), MakeRustlsConnect::new(config)))
}

/// Connections for reads (history, room loads, logins' user lookups).
pub(super) const READ_CONNECTIONS: usize = 8;
/// A read that runs longer than this is cancelled by the database.
pub(super) const READ_TIMEOUT_MS: u64 = 5_000;

pub(super) fn pool_of(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
