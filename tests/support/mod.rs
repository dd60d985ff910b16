//! Helpers shared by the end-to-end tests: the built guests, the tollgate
//! binary started on ephemeral ports, and HTTPS clients.

#![allow(dead_code)] // each test file uses some helpers, never all

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub mod apiserver;

// Some test files load no guest.
#[allow(unused_imports)]
pub use tollgate_test_artifacts as guests;

pub const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");

/// The schema validator the manifest tests use, pinned.
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `python3 -m kubernetes_validate`, installed from PyPI on first use, so
/// `cargo test` needs nothing but Python on a fresh machine.
pub fn schema_validator() -> Command {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let present =
            Command::new("python3").args(["-c", "import kubernetes_validate"]).status().is_ok_and(|s| s.success());
        if !present {
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", KUBERNETES_VALIDATE])
                .status()
                .expect("python3 -m pip runs");
            assert!(status.success(), "pip install {KUBERNETES_VALIDATE} failed");
        }
    });
    let mut command = Command::new("python3");
    command.args(["-m", "kubernetes_validate"]);
    command
}

/// The settings file a reference plugin ships with.
pub fn shipped_settings(plugin: &str) -> PathBuf {
    PathBuf::from(format!("{}/../plugins/{plugin}/{plugin}.settings.json", env!("CARGO_MANIFEST_DIR")))
}

/// Copies a built guest into `dir` as `<stem>.wasm`, with `settings` text
/// beside it if given.
pub fn install(dir: &Path, stem: &str, guest: &str, settings: Option<&str>) {
    std::fs::copy(guest, dir.join(format!("{stem}.wasm"))).expect("copy guest");
    if let Some(text) = settings {
        std::fs::write(dir.join(format!("{stem}.settings.json")), text).expect("write settings");
    }
}

/// Copies a reference plugin with its shipped settings.
pub fn install_reference(dir: &Path, plugin: &str, guest: &str) {
    let settings = std::fs::read_to_string(shipped_settings(plugin)).expect("shipped settings");
    install(dir, plugin, guest, Some(&settings));
}

/// A running `tollgate serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// When the process was started.
    pub started: std::time::Instant,
    /// The admission listener.
    pub admission: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The gateway listener, unless started with `--no-gateway`.
    pub gateway: Option<SocketAddr>,
    /// Where the generated CA bundle was written (self-signed mode).
    pub ca_file: PathBuf,
    /// Every log line so far and to come.
    pub log: Arc<Mutex<Vec<String>>>,
    _scratch: tempfile::TempDir,
}

impl Server {
    /// Starts `tollgate serve --plugins dir` plus `args`, and waits until its
    /// plugins are loaded. Its compiled-code cache is private to it.
    pub fn start(plugins: &Path, args: &[&str]) -> Server {
        Self::start_with_cache(plugins, None, args)
    }

    /// Like [`Server::start`], with the compiled-code cache in `cache`.
    pub fn start_with_cache(plugins: &Path, cache: Option<&Path>, args: &[&str]) -> Server {
        Self::launch(None, plugins, cache, args)
    }

    /// Like [`Server::start`], run in the working directory `cwd`, so that
    /// `plugins` may be relative to it.
    pub fn start_in(cwd: &Path, plugins: &Path, args: &[&str]) -> Server {
        Self::launch(Some(cwd), plugins, None, args)
    }

    fn launch(cwd: Option<&Path>, plugins: &Path, cache: Option<&Path>, args: &[&str]) -> Server {
        let scratch = tempfile::tempdir().expect("temp dir");
        let cache = cache.map(Path::to_path_buf).unwrap_or_else(|| scratch.path().join("cache"));
        let ca_file = scratch.path().join("ca.pem");
        let mut command = Command::new(TOLLGATE);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command.arg("serve");
        // Each server keeps its generated CA in a state directory of its
        // own, unless the test names one.
        if !args.contains(&"--state-dir") {
            command.arg("--state-dir").arg(scratch.path().join("state"));
        }
        // Tests read why a plugin refused its settings from /plugins; a test
        // of the default passes `--plugins-detail=false`.
        if !args.iter().any(|a| a.starts_with("--plugins-detail")) {
            command.arg("--plugins-detail");
        }
        let mut child = command
            .arg("--plugins")
            .arg(plugins)
            .args(["--admission-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .args(if args.iter().any(|a| *a == "--gateway-addr" || *a == "--no-gateway") {
                &[][..]
            } else {
                &["--gateway-addr", "127.0.0.1:0"][..]
            })
            .arg("--ca-out")
            .arg(&ca_file)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate serve");
        let started = std::time::Instant::now();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let (mut admission, mut metrics, mut gateway) = (None, None, None);
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tollgate serve did not become ready: {:#?}", log.lock().unwrap());
            };
            if line.contains("admission webhook listening") {
                admission = Some(addr_in(&line));
            } else if line.contains("metrics listening") {
                metrics = Some(addr_in(&line));
            } else if line.contains("gateway listening") {
                gateway = Some(addr_in(&line));
            } else if line.contains("plugins ready") {
                break;
            }
        }
        Server {
            child,
            started,
            admission: admission.expect("admission address logged"),
            metrics: metrics.expect("metrics address logged"),
            gateway,
            ca_file,
            log,
            _scratch: scratch,
        }
    }

    /// `https://localhost:<port><path>` on the admission listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.admission.port())
    }

    /// The generated CA bundle.
    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(&self.ca_file).expect("CA bundle written")
    }

    /// The Prometheus text of the metrics listener.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        plain().get(url).send().await.expect("metrics reachable").text().await.expect("metrics text")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("query child").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_in(line: &str) -> SocketAddr {
    let start = line.find("addr=").expect("addr= in line") + 5;
    line[start..].split_whitespace().next().unwrap().parse().expect("a socket address")
}

/// A ConfigMap CREATE review by `alice` in `team-a`, with `uid`.
pub fn configmap_review(uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"metadata": {"name": "c", "namespace": "team-a"}}
        }
    })
}

/// POSTs `review` to `url` and returns the JSON answer.
pub async fn post_review(http: &reqwest::Client, url: &str, review: &serde_json::Value) -> serde_json::Value {
    let response = http.post(url).json(review).send().await.expect("request sent");
    response.json().await.expect("a JSON answer")
}

/// What the server answers a ConfigMap review on `path`: `Some(allowed)`,
/// or `None` for a 404 (no plugin there).
pub async fn ask(http: &reqwest::Client, server: &Server, path: &str) -> Option<bool> {
    let response = http.post(server.url(path)).json(&configmap_review("ask")).send().await.expect("request sent");
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON answer");
    let answer = &body["response"];
    assert_eq!(answer["uid"], "ask");
    Some(answer["allowed"].as_bool().expect("allowed is a bool"))
}

/// Polls until the server answers `want` on `path` (see [`ask`]), for at
/// most `within`: a change that never shows up fails the test rather than
/// hanging it.
pub async fn answers_within(http: &reqwest::Client, server: &Server, path: &str, want: Option<bool>, within: Duration) {
    let give_up = std::time::Instant::now() + within;
    loop {
        let got = ask(http, server, path).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < give_up, "{path} still answers {got:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client for the plain-HTTP metrics listener.
pub fn plain() -> reqwest::Client {
    // reqwest is built without a default crypto provider; it wants one even
    // for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

/// A CA and a client certificate it signed (clientAuth), as PEM:
/// (ca, cert, key).
pub fn client_identity(name: &str) -> (String, String, String) {
    identity(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
}

/// A CA and a serving certificate for `name` it signed (serverAuth), as
/// PEM: (ca, cert, key).
pub fn server_identity(name: &str) -> (String, String, String) {
    identity(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
}

fn identity(name: &str, purpose: rcgen::ExtendedKeyUsagePurpose) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let mut leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf.extended_key_usages = vec![purpose];
    let leaf_key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
    (ca_pem, cert.pem(), leaf_key.serialize_pem())
}

/// An HTTPS client trusting `ca_pem`, presenting `identity` (certificate and
/// key PEM) if given.
pub fn client(ca_pem: &[u8], identity: Option<(&str, &str)>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls the server's log until a line contains every one of `words`.
pub async fn logged(server: &Server, words: &[&str]) {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if server.log.lock().unwrap().iter().any(|l| words.iter().all(|w| l.contains(w))) {
            return;
        }
        assert!(std::time::Instant::now() < give_up, "never logged {words:?}: {:#?}", server.log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
