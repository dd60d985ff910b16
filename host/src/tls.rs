//! TLS for the admission listener (rustls, ring provider).
//!
//! The serving certificate comes from files that are re-read when they
//! change (cert-manager and service-ca rotate them in place or swap a
//! Kubernetes `..data` symlink), checked at every handshake, so a rotated
//! certificate is served from the next connection on. With no files, a
//! self-signed CA and serving certificate for localhost are generated at
//! start-up and the CA bundle is written out for clients. With a client CA,
//! only clients presenting a certificate it signed may connect.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
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
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files (certificate chain and private key), re-read on change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Generate a CA and a serving certificate for `names`; write the CA
    /// certificate (PEM) to `ca_out` so clients can trust it.
    SelfSigned {
        /// DNS names and IP addresses the certificate is valid for.
        names: Vec<String>,
        /// Where to write the CA bundle.
        ca_out: PathBuf,
    },
}

/// How the admission listener does TLS.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The serving certificate.
    pub cert: CertSource,
    /// Require client certificates signed by this CA bundle (PEM).
    pub client_ca: Option<PathBuf>,
}

/// The crypto provider used everywhere, chosen explicitly so that no
/// process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration (HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(options: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let resolver: Arc<dyn ResolvesServerCert> = match &options.cert {
        CertSource::Files { cert, key } => Arc::new(ReloadingCert::new(cert.clone(), key.clone(), provider.clone())?),
        CertSource::SelfSigned { names, ca_out } => {
            let generated = SelfSigned::generate(names)?;
            write_ca(ca_out, &generated.ca_pem)?;
            tracing::info!(ca_bundle = %ca_out.display(), names = ?names, "generated a self-signed serving certificate; trust this CA bundle");
            Arc::new(StaticCert(Arc::new(certified_key(&generated.cert_pem, &generated.key_pem, &provider)?)))
        }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &options.client_ca {
        Some(file) => {
            let mut roots = RootCertStore::empty();
            add_certs(&mut roots, file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for TLS to gateway upstreams: the system's
/// roots, plus the certificates in `extra_ca` (for upstreams with a
/// private CA).
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the extra CA may be all
    // that is needed, and plain-HTTP upstreams need none.
    let (_added, _ignored) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(file) = extra_ca {
        add_certs(&mut roots, file)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Adds every certificate of a PEM file to `roots`.
fn add_certs(roots: &mut RootCertStore, file: &Path) -> Result<(), TlsError> {
    for cert in read_certs(file)? {
        roots.add(cert).map_err(|e| TlsError::File { file: file.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

/// A generated CA and the serving certificate it signed, all PEM.
pub struct SelfSigned {
    /// The CA certificate clients should trust.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

impl SelfSigned {
    /// Generates a CA and a serving certificate valid for `names`.
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Tollgate self-signed CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().map_err(fail)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;

        let mut leaf = CertificateParams::new(names.to_vec()).map_err(fail)?;
        leaf.distinguished_name.push(DnType::CommonName, "tollgate");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let leaf_key = KeyPair::generate().map_err(fail)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(fail)?;
        Ok(Self { ca_pem: ca_cert.pem(), cert_pem: leaf_cert.pem(), key_pem: leaf_key.serialize_pem() })
    }
}

fn write_ca(path: &Path, pem: &str) -> Result<(), TlsError> {
    let fail =
        |e: io::Error| TlsError::File { file: path.to_path_buf(), reason: format!("cannot write the CA bundle: {e}") };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(path, pem).map_err(fail)
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File { file: file.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| fail(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn certified_key(cert_pem: &str, key_pem: &str, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Config(e.to_string()))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Config(e.to_string()))
}

fn load_files(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { file: key.to_path_buf(), reason: format!("no usable private key: {e}") })?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| TlsError::File {
        file: cert.to_path_buf(),
        reason: format!("certificate and key {} do not belong together: {e}", key.display()),
    })
}

/// Serves one certificate for ever.
#[derive(Debug)]
struct StaticCert(Arc<CertifiedKey>);

impl ResolvesServerCert for StaticCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Identity of a file's current content, following symlinks: a rotation by
/// rewrite, by rename into place or by symlink swap all change it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self(std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))))
    }
}

/// The certificate from files, re-read when either file changes. A broken
/// new pair is logged and the previous certificate keeps serving.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = (Stamp::of(&cert), Stamp::of(&key));
        let loaded = Arc::new(load_files(&cert, &key, &provider)?);
        Ok(Self { cert, key, provider, current: Mutex::new((stamps.0, stamps.1, loaded)) })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let stamps = (Stamp::of(&self.cert), Stamp::of(&self.key));
        // A poisoned lock only means another handshake panicked; the data
        // (a stamp and a certificate) is still whole.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamps.0 != current.0 || stamps.1 != current.1 {
            match load_files(&self.cert, &self.key, &self.provider) {
                Ok(loaded) => {
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    *current = (stamps.0, stamps.1, Arc::new(loaded));
                }
                Err(error) => {
                    // Keep serving the old pair; try again at the next handshake
                    // (a rotation may be half written).
                    tracing::warn!(%error, "serving certificate changed but cannot be loaded; keeping the previous one");
                }
            }
        }
        Some(current.2.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_loads_and_broken_files_say_which() {
        let generated = SelfSigned::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        certified_key(&generated.cert_pem, &generated.key_pem, &provider()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, &generated.key_pem).unwrap();
        let err = load_files(&cert, &key, &provider()).unwrap_err().to_string();
        assert!(err.contains("tls.crt") && err.contains("no CERTIFICATE"), "{err}");

        let other = SelfSigned::generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, &generated.cert_pem).unwrap();
        std::fs::write(&key, &other.key_pem).unwrap();
        let err = load_files(&cert, &key, &provider()).unwrap_err().to_string();
        assert!(err.contains("do not belong together"), "{err}");
    }
}
