//! The CA Tollgate generates for itself when no serving certificate is given,
//! kept in a state directory so that it outlives restarts.
//!
//! Webhooks registered with a CA (their `caBundle`) trust it until someone
//! registers another: a CA made anew at every start made every registered
//! webhook fail with `x509: certificate signed by unknown authority`
//! (`Fail` plugins then block every matching write, `Ignore` plugins stop
//! enforcing without a word). So the CA is made once, and kept:
//!
//! * `ca.crt` and `ca.key`: the CA (10 years). Never replaced by Tollgate:
//!   a CA that cannot be read, or has expired, stops the start with the
//!   reason, for the operator to decide.
//! * `tls.crt` and `tls.key`: the serving certificate, issued by that CA for
//!   the `--tls-san` names, valid for a year and renewed under the same CA
//!   once two thirds of its life have passed (at start, or while serving, at
//!   the next TLS handshake), or when the names change.
//!
//! The directory is private to the user (0700, keys 0600); files are written
//! under a lock, to a temporary name and renamed, so two servers started at
//! once on one directory agree on one CA.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::certs::{TlsError, certified_key, signed_by};

/// How long the generated CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving certificate is valid.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// No serving certificate is issued for less than this.
const MIN_SERVING_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Warn at start when the CA has less than this left.
const CA_WARN_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "tls.crt";
const SERVING_KEY: &str = "tls.key";
const LOCK: &str = ".lock";

/// A serving certificate and when it should be renewed.
struct Serving {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// The state directory's CA and the serving certificate it issued; serves
/// that certificate and renews it when due.
pub struct GeneratedCa {
    authority: Authority,
    serving: Mutex<Serving>,
}

impl std::fmt::Debug for GeneratedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.authority;
        f.debug_struct("GeneratedCa").field("dir", &a.dir).field("names", &a.names).finish_non_exhaustive()
    }
}

impl GeneratedCa {
    /// Opens the state directory `dir` (creating it), reusing its CA and
    /// serving certificate while valid for `names`, and making what is
    /// missing or due.
    pub fn open(dir: &Path, names: &[String], provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        create_private_dir(dir)?;
        let _lock = lock(dir)?;
        let (ca_pem, issuer, ca_not_after) = match read_pair(dir, CA_CERT, CA_KEY)? {
            Some((pem, key)) => load_ca(dir, &pem, key)?,
            None => make_ca(dir)?,
        };
        let authority =
            Authority { dir: dir.to_path_buf(), names: names.to_vec(), ca_pem, issuer, ca_not_after, provider };
        let kept = match read_pair(dir, SERVING_CERT, SERVING_KEY)? {
            Some((pem, key)) => authority.reuse(&pem, &key),
            None => None,
        };
        let serving = match kept {
            Some(serving) => serving,
            None => authority.issue()?,
        };
        Ok(Self { authority, serving: Mutex::new(serving) })
    }

    /// The CA certificate (PEM): what clients, and webhooks' `caBundle`,
    /// must trust.
    pub fn ca_pem(&self) -> &str {
        &self.authority.ca_pem
    }

    /// Where the CA certificate is kept.
    pub fn ca_file(&self) -> PathBuf {
        ca_file(&self.authority.dir)
    }

    /// The chain served now (leaf first).
    pub fn resolve_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    /// The serving certificate, renewed first if it is due.
    fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock only means a handshake panicked; the certificate
        // it guards is whole.
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if SystemTime::now() >= serving.renew_at {
            // Another server on the same directory may be renewing too.
            let _lock = lock(&self.authority.dir);
            match self.authority.issue() {
                Ok(renewed) => *serving = renewed,
                Err(error) => {
                    // The current certificate is still valid for a third of
                    // its life: keep it, and try again a little later.
                    tracing::warn!(%error, "cannot renew the serving certificate; keeping the current one");
                    serving.renew_at = SystemTime::now() + Duration::from_secs(600);
                }
            }
        }
        serving.key.clone()
    }
}

impl ResolvesServerCert for GeneratedCa {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The kept CA, and what it issues serving certificates for.
struct Authority {
    dir: PathBuf,
    names: Vec<String>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    ca_not_after: SystemTime,
    provider: Arc<CryptoProvider>,
}

impl Authority {
    /// The stored serving certificate, if it is this CA's, covers the names
    /// and is not due for renewal.
    fn reuse(&self, pem: &str, key: &str) -> Option<Serving> {
        let Ok(facts) = CertFacts::read(pem) else {
            tracing::warn!(dir = %self.dir.display(), "stored serving certificate is unreadable; issuing a new one");
            return None;
        };
        let renew_at = renew_at(facts.not_before, facts.not_after);
        let current = SystemTime::now() < renew_at && facts.names == sorted(&self.names);
        let certified = certified_key(pem, key, &self.provider).ok()?;
        let signed_by_ca = certified.cert.first().is_some_and(|leaf| self.signed(leaf));
        (current && signed_by_ca).then(|| Serving { key: Arc::new(certified), renew_at })
    }

    /// Whether `leaf` was signed by this CA.
    fn signed(&self, leaf: &CertificateDer<'_>) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes());
        if ca.ok().and_then(|der| roots.add(der).ok()).is_none() {
            return false;
        }
        signed_by(leaf, &[], &roots, &self.provider).is_ok()
    }

    /// Issues a serving certificate for the names under the CA, stores it
    /// and returns it.
    fn issue(&self) -> Result<Serving, TlsError> {
        let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let now = SystemTime::now();
        // A certificate cut short by the CA's end would be renewed ever more
        // often; near its end, the CA must be replaced instead.
        if self.ca_not_after < now + MIN_SERVING_LIFETIME {
            return Err(TlsError::Generate(format!(
                "the kept CA ({}) expires within {} days: replace it (remove ca.crt and ca.key, restart, register \
                 the new caBundle)",
                self.dir.join(CA_CERT).display(),
                MIN_SERVING_LIFETIME.as_secs() / 86_400
            )));
        }
        let not_after = (now + SERVING_LIFETIME).min(self.ca_not_after);
        let mut leaf = CertificateParams::new(self.names.clone()).map_err(fail)?;
        leaf.distinguished_name.push(DnType::CommonName, "tollgate");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        leaf.not_before = offset(now - Duration::from_secs(300))?;
        leaf.not_after = offset(not_after)?;
        let key = KeyPair::generate().map_err(fail)?;
        let cert = leaf.signed_by(&key, &self.issuer).map_err(fail)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write_private(&self.dir.join(SERVING_KEY), &key_pem)?;
        write_private(&self.dir.join(SERVING_CERT), &cert_pem)?;
        tracing::info!(dir = %self.dir.display(), names = ?self.names, "issued a serving certificate under the kept CA");
        Ok(Serving {
            key: Arc::new(certified_key(&cert_pem, &key_pem, &self.provider)?),
            renew_at: renew_at(now, not_after),
        })
    }
}

/// Where the CA certificate of state directory `dir` is kept.
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join(CA_CERT)
}

/// Two thirds into a certificate's life, as cert-manager renews by default.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

/// What the stored serving certificate says of itself.
struct CertFacts {
    not_before: SystemTime,
    not_after: SystemTime,
    /// The subject public key's bits.
    public_key: Vec<u8>,
    /// DNS names and IP addresses, sorted as text.
    names: Vec<String>,
}

impl CertFacts {
    fn read(pem: &str) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
        let time = |t: x509_parser::time::ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => names.extend(ip_text(bytes)),
                    _ => {}
                }
            }
        }
        names.sort();
        Ok(Self {
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            names,
        })
    }
}

/// A certificate's IP address SAN as text.
fn ip_text(bytes: &[u8]) -> Option<String> {
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(ip.to_string())
}

/// `--tls-san` names as the certificate holds them: IP addresses in their
/// canonical text, sorted.
fn sorted(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> =
        names.iter().map(|n| n.parse::<std::net::IpAddr>().map_or_else(|_| n.clone(), |ip| ip.to_string())).collect();
    out.sort();
    out.dedup();
    out
}

/// Loads the kept CA, refusing one that cannot be used: replacing it would
/// break every webhook registered with it.
fn load_ca(dir: &Path, pem: &str, key: String) -> Result<(String, Issuer<'static, KeyPair>, SystemTime), TlsError> {
    let unusable = |reason: String| TlsError::File {
        file: dir.join(CA_CERT),
        reason: format!(
            "the kept CA cannot be used: {reason}. Tollgate does not replace it on its own: webhooks registered \
             with it would stop trusting Tollgate. Restore it, or remove {CA_CERT} and {CA_KEY} from {} to make \
             a new CA and register its caBundle again (--sync-webhooks does)",
            dir.display()
        ),
    };
    let facts = CertFacts::read(pem).map_err(&unusable)?;
    let key = KeyPair::from_pem(&key).map_err(|e| unusable(format!("{CA_KEY}: {e}")))?;
    if facts.public_key != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(unusable(format!("{CA_KEY} is not the key of {CA_CERT}")));
    }
    let issuer = Issuer::from_ca_cert_pem(pem, key).map_err(|e| unusable(e.to_string()))?;
    let now = SystemTime::now();
    if facts.not_after <= now {
        return Err(unusable("it has expired".into()));
    }
    if facts.not_after.duration_since(now).unwrap_or_default() < CA_WARN_BEFORE {
        tracing::warn!(
            ca = %dir.join(CA_CERT).display(),
            "the kept CA expires within a year; plan its replacement (remove it, restart, register the new caBundle)"
        );
    }
    Ok((pem.to_string(), issuer, facts.not_after))
}

/// Makes and stores a new CA.
fn make_ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>, SystemTime), TlsError> {
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = SystemTime::now();
    let not_after = now + CA_LIFETIME;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "Tollgate CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = offset(now - Duration::from_secs(300))?;
    params.not_after = offset(not_after)?;
    let key = KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let pem = cert.pem();
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    write_private(&dir.join(CA_CERT), &pem)?;
    tracing::info!(ca = %dir.join(CA_CERT).display(), "made a CA for the generated serving certificates; it is kept for later runs");
    Ok((pem, Issuer::new(params, key), not_after))
}

fn offset(at: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| TlsError::Generate(e.to_string()))
}

/// Both files of a certificate and its key, or `None` when neither exists.
/// Only one of the two is an error: something removed half a pair.
fn read_pair(dir: &Path, cert: &str, key: &str) -> Result<Option<(String, String)>, TlsError> {
    let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::File { file: dir.join(name), reason: format!("cannot read it: {e}") }),
    };
    match (read(cert)?, read(key)?) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) if cert == SERVING_CERT => Ok(None),
        (Some(_), None) => Err(TlsError::File { file: dir.join(key), reason: format!("is missing beside {cert}") }),
        (None, Some(_)) => Err(TlsError::File { file: dir.join(cert), reason: format!("is missing beside {key}") }),
    }
}

/// Creates `dir` readable by its owner only (or checks an existing one is).
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let fail = |e: std::io::Error| TlsError::File { file: dir.to_path_buf(), reason: format!("state directory: {e}") };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    let mode = std::fs::metadata(dir).map_err(fail)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the state directory holds private keys but others may read it; chmod 700 it");
    }
    Ok(())
}

/// Holds the directory's lock until dropped.
fn lock(dir: &Path) -> Result<File, TlsError> {
    let file = dir.join(LOCK);
    let fail = |e: std::io::Error| TlsError::File { file: file.clone(), reason: format!("cannot lock: {e}") };
    let handle = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&file).map_err(fail)?;
    handle.lock().map_err(fail)?;
    Ok(handle)
}

/// Writes `text` readable by its owner only, to a temporary name then
/// renamed, so a reader never sees half a file.
fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    let fail = |e: std::io::Error| TlsError::File { file: path.to_path_buf(), reason: format!("cannot write: {e}") };
    // One temporary name per file (ca.key and ca.crt must not share one),
    // removed first: the mode applies only to a file being created.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(fail)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    #[test]
    fn the_ca_and_serving_certificate_are_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = GeneratedCa::open(dir.path(), &names(), crate::tls::provider()).unwrap();
        let serving = std::fs::read(dir.path().join(SERVING_CERT)).unwrap();
        let again = GeneratedCa::open(dir.path(), &names(), crate::tls::provider()).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(serving, std::fs::read(dir.path().join(SERVING_CERT)).unwrap(), "still valid: reused");
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Other names: a new serving certificate under the same CA.
        let other = GeneratedCa::open(dir.path(), &["tollgate.example".into()], crate::tls::provider()).unwrap();
        assert_eq!(first.ca_pem(), other.ca_pem());
        let renewed = std::fs::read_to_string(dir.path().join(SERVING_CERT)).unwrap();
        assert_eq!(CertFacts::read(&renewed).unwrap().names, ["tollgate.example"]);
        let leaf = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
        assert!(first.authority.signed(&leaf));
    }

    #[test]
    fn a_due_certificate_is_renewed_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GeneratedCa::open(dir.path(), &names(), crate::tls::provider()).unwrap();
        let before = std::fs::read(dir.path().join(SERVING_CERT)).unwrap();
        ca.serving.lock().unwrap().renew_at = SystemTime::now() - Duration::from_secs(1);
        let fresh = ca.current();
        assert_ne!(before, std::fs::read(dir.path().join(SERVING_CERT)).unwrap());
        assert!(ca.authority.signed(&fresh.cert[0]));
        assert!(ca.serving.lock().unwrap().renew_at > SystemTime::now() + Duration::from_secs(200 * 24 * 3600));
    }

    #[test]
    fn a_broken_ca_stops_the_start_instead_of_being_replaced() {
        let dir = tempfile::tempdir().unwrap();
        GeneratedCa::open(dir.path(), &names(), crate::tls::provider()).unwrap();
        std::fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        let error = GeneratedCa::open(dir.path(), &names(), crate::tls::provider()).unwrap_err().to_string();
        assert!(error.contains("the kept CA cannot be used") && error.contains("does not replace it"), "{error}");
        assert_eq!(std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap(), "not a key");
    }
}
