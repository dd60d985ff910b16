//! TLS for the admission listener (rustls, ring provider).
//!
//! The serving certificate comes from files that are re-read when they
//! change (cert-manager and service-ca rotate them in place or swap a
//! Kubernetes `..data` symlink), checked at every handshake, so a rotated
//! certificate is served from the next connection on. With no files, a
//! certificate is issued by Tollgate's own CA, kept in its state directory
//! ([`ca`]). With a client CA, only clients presenting a certificate
//! it signed may connect. [`ServingTls::registered_ca`] decides which CA the
//! webhooks registered for this listener must carry.

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

pub mod ca;
mod certs;

pub use certs::TlsError;
use certs::signed_by;

use crate::cluster::webhooks::CaSource;

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
    /// A serving certificate for `names` from the CA kept in `state_dir`
    /// (made on first use); the CA certificate is also copied to `ca_out`.
    Generated {
        /// DNS names and IP addresses the certificate is valid for.
        names: Vec<String>,
        /// Where the CA and the serving certificate are kept.
        state_dir: PathBuf,
        /// An extra copy of the CA bundle for clients, if wanted.
        ca_out: Option<PathBuf>,
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

/// The admission listener's TLS: the rustls configuration, and what the
/// API server must trust to call it.
#[derive(Debug, Clone)]
pub struct ServingTls {
    /// For the listener (HTTP/2 and HTTP/1.1 by ALPN).
    pub config: Arc<rustls::ServerConfig>,
    /// The CA of a generated certificate (PEM).
    generated_ca: Option<String>,
    /// The certificate chain served at start (leaf first).
    chain: Vec<CertificateDer<'static>>,
}

/// Builds the admission listener's TLS.
pub fn server_config(options: &TlsOptions) -> Result<ServingTls, TlsError> {
    let provider = provider();
    let (resolver, generated_ca, chain): (Arc<dyn ResolvesServerCert>, _, _) = match &options.cert {
        CertSource::Files { cert, key } => {
            let reloading = ReloadingCert::new(cert.clone(), key.clone(), provider.clone())?;
            let chain = reloading.chain();
            (Arc::new(reloading), None, chain)
        }
        CertSource::Generated { names, state_dir, ca_out } => {
            let ca = ca::GeneratedCa::open(state_dir, names, provider.clone())?;
            if let Some(out) = ca_out {
                write_ca(out, ca.ca_pem())?;
            }
            let shown = ca_out.clone().unwrap_or_else(|| ca.ca_file());
            tracing::info!(ca_bundle = %shown.display(), names = ?names, "serving a certificate of the kept CA; trust this CA bundle");
            let ca_pem = ca.ca_pem().to_string();
            let chain = ca.resolve_chain();
            (Arc::new(ca), Some(ca_pem), chain)
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
    Ok(ServingTls { config: Arc::new(config), generated_ca, chain })
}

impl ServingTls {
    /// The CA the webhooks registered for this listener must carry, given
    /// what the operator asked for (`--ca-bundle`, `--inject-ca`, or
    /// nothing). A combination under which the API server could not trust
    /// the listener is refused, with the reason: registering it would make
    /// every call fail with "x509: certificate signed by unknown authority".
    pub fn registered_ca(&self, requested: &CaSource) -> Result<CaSource, TlsError> {
        let refuse = |reason: &str| Err(TlsError::CaMismatch(reason.to_string()));
        match (&self.generated_ca, requested) {
            (Some(ca), CaSource::None) => Ok(CaSource::Bundle(ca.clone().into_bytes())),
            (Some(_), CaSource::Bundle(pem)) | (None, CaSource::Bundle(pem)) => {
                if self.verifies(pem) {
                    Ok(requested.clone())
                } else {
                    refuse(
                        "--ca-bundle does not hold the CA that signed the serving certificate, so the API \
                         server would not trust it (with a generated certificate, leave out --ca-bundle: the \
                         kept CA is registered)",
                    )
                }
            }
            (Some(_), CaSource::CertManager(_) | CaSource::ServiceCa) => refuse(
                "--inject-ca cannot vouch for a certificate Tollgate generated: serve that issuer's \
                 certificate with --tls-cert/--tls-key, or leave out --inject-ca",
            ),
            (None, CaSource::CertManager(_) | CaSource::ServiceCa) => Ok(requested.clone()),
            (None, CaSource::None) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if self.verifies_with(&roots) {
                    Ok(CaSource::None)
                } else {
                    refuse(
                        "--sync-webhooks would register no caBundle, and no system root signed --tls-cert: \
                         give --ca-bundle FILE (the CA that signed it) or --inject-ca",
                    )
                }
            }
        }
    }

    /// Whether the PEM bundle holds a CA that signed the served chain.
    fn verifies(&self, pem: &[u8]) -> bool {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem).flatten() {
            let _ = roots.add(cert);
        }
        self.verifies_with(&roots)
    }

    fn verifies_with(&self, roots: &RootCertStore) -> bool {
        match self.chain.split_first() {
            Some((leaf, intermediates)) => signed_by(leaf, intermediates, roots, &provider()).is_ok(),
            None => false,
        }
    }
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

fn load_files(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { file: key.to_path_buf(), reason: format!("no usable private key: {e}") })?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| TlsError::File {
        file: cert.to_path_buf(),
        reason: format!("certificate and key {} do not belong together: {e}", key.display()),
    })
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

impl ReloadingCert {
    /// The chain loaded now.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).2.cert.clone()
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

    /// A self-signed certificate and its key, PEM.
    struct SelfSigned {
        cert_pem: String,
        key_pem: String,
    }

    impl SelfSigned {
        fn generate(names: &[&str]) -> Self {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let made = rcgen::generate_simple_self_signed(names).unwrap();
            Self { cert_pem: made.cert.pem(), key_pem: made.signing_key.serialize_pem() }
        }
    }

    #[test]
    fn a_generated_certificate_loads_and_broken_files_say_which() {
        let generated = SelfSigned::generate(&["localhost", "127.0.0.1"]);
        certs::certified_key(&generated.cert_pem, &generated.key_pem, &provider()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, &generated.key_pem).unwrap();
        let err = load_files(&cert, &key, &provider()).unwrap_err().to_string();
        assert!(err.contains("tls.crt") && err.contains("no CERTIFICATE"), "{err}");

        let other = SelfSigned::generate(&["localhost"]);
        std::fs::write(&cert, &generated.cert_pem).unwrap();
        std::fs::write(&key, &other.key_pem).unwrap();
        let err = load_files(&cert, &key, &provider()).unwrap_err().to_string();
        assert!(err.contains("do not belong together"), "{err}");
    }
}
