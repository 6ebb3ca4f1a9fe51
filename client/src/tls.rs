//! TLS client settings: the platform's roots, plus `SSL_CERT_FILE` and `--cacert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA certificates from {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "no trusted CA certificates found: install your system's CA bundle or pass --cacert FILE"
    )]
    NoRoots,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client TLS configuration: platform roots, then `SSL_CERT_FILE`, then `cacert`.
pub fn client_config(cacert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    debug!(
        added,
        errors = native.errors.len(),
        "platform CA certificates"
    );
    let env_file = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for path in env_file.iter().map(PathBuf::as_path).chain(cacert) {
        let certs = read_pem(path)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        debug!(added, path = %path.display(), "extra CA certificates");
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let fail = |reason: String| TlsSetupError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificates in it".into()));
    }
    Ok(certs)
}
