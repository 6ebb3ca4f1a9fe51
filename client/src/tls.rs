//! TLS client settings: the platform's roots (or, as with OpenSSL, `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` instead of them when set), plus `--cacert`.

use std::io::Write as _;
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

/// Builds the client TLS configuration: platform roots (replaced by `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set; the file is read here again for a clear error when it is
/// unreadable), then `cacert`.
/// `insecure` accepts any certificate (with a warning on stderr): for a hub on a self-signed
/// certificate, when asked for explicitly.
pub fn client_config(
    cacert: Option<&Path>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if insecure {
        let _ = writeln!(
            std::io::stderr(),
            "hubssh: warning: --insecure: the hub's certificate is not checked, so anyone on the network path could read or change this session"
        );
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
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

/// `--insecure`: any certificate is accepted; the handshake signatures are still checked, so the
/// session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
