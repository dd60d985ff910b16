//! What both the listener's TLS and the kept CA need: the error type, a
//! served chain and key from PEM, and whether a CA signed a certificate.

use std::path::PathBuf;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong setting up TLS. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {reason}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refused the setup.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Generating a CA or serving certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
    /// The webhooks would carry a CA that does not vouch for the listener.
    #[error("{0}")]
    CaMismatch(String),
}

/// A certificate chain and key (PEM) as rustls serves them.
pub(super) fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Config(e.to_string()))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Config(e.to_string()))
}

/// Checks that `leaf` chains to one of `roots` (names are not checked: the
/// question is only who signed it).
pub fn signed_by(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
) -> Result<(), rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        rustls_pki_types::UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
}
