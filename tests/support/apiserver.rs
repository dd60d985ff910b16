//! A fake Kubernetes API server on loopback, for the end-to-end tests of
//! `tollgate serve --sync-webhooks`.
//!
//! It serves the two cluster-scoped resources Tollgate writes,
//! `validatingwebhookconfigurations` and `mutatingwebhookconfigurations` of
//! `admissionregistration.k8s.io/v1`, and behaves as kube-apiserver documents
//! where Tollgate could tell the difference. An earlier fake stored whatever
//! was PATCHed and answered 200; a real API server then broke Tollgate where
//! that fake never looked: server-side apply keeps what other managers own,
//! other clients delete and edit the objects, watches expire, tokens are
//! refused. Each behaviour below names the page it follows:
//!
//! - server-side apply with field ownership, conflicts and `force`, and the
//!   `Update` operation of every other write
//!   (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>);
//! - `resourceVersion`, LIST, WATCH, bookmarks and `410 Gone`
//!   (<https://kubernetes.io/docs/reference/using-api/api-concepts/>);
//! - errors as `metav1.Status` with the API server's reasons
//!   (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/>);
//! - defaults and validation of the webhook configurations
//!   (<https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/validating-webhook-configuration-v1/>);
//! - bearer tokens and anonymous requests
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/authentication/>).
//!
//! Tests also act on it directly, as another tool would ([`ApiServer::create_as`],
//! [`ApiServer::edit_as`], [`ApiServer::delete`]), stop and restart it
//! ([`ApiServer::stop`]), and see every request it got and how Tollgate
//! answered the admission paths it probed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The bearer token the fake accepts until told otherwise, and the one
/// [`ApiServer::kubeconfig`] writes.
pub const TOKEN: &str = "test-token";
/// The API group of the webhook configurations.
pub const GROUP: &str = "admissionregistration.k8s.io";
/// Their `apiVersion`.
pub const API_VERSION: &str = "admissionregistration.k8s.io/v1";
/// Where they are served.
const PREFIX: &str = "/apis/admissionregistration.k8s.io/v1/";
/// kube-apiserver (`kube-apiserver --min-request-timeout`, 1800 s) closes a
/// watch that named no `timeoutSeconds` after this long.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a watch or list for a resourceVersion the server has not reached
/// yet waits before answering 504 (the watch cache waits 3 s).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

/// One of the two resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `validatingwebhookconfigurations`.
    Validating,
    /// `mutatingwebhookconfigurations`.
    Mutating,
}

impl Resource {
    fn plural(self) -> &'static str {
        match self {
            Resource::Validating => "validatingwebhookconfigurations",
            Resource::Mutating => "mutatingwebhookconfigurations",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Validating => "ValidatingWebhookConfiguration",
            Resource::Mutating => "MutatingWebhookConfiguration",
        }
    }

    /// `<plural>.<group>`, as the API server names a resource in messages.
    fn qualified(self) -> String {
        format!("{}.{GROUP}", self.plural())
    }

    fn from_kind(kind: &str) -> Option<Resource> {
        [Resource::Validating, Resource::Mutating].into_iter().find(|r| r.kind() == kind)
    }

    fn from_plural(plural: &str) -> Option<Resource> {
        [Resource::Validating, Resource::Mutating].into_iter().find(|r| r.plural() == plural)
    }
}

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Content-Type` header (empty without one).
    pub content_type: String,
    /// The HTTP status answered (0 while being answered).
    pub status: u16,
}

/// A refused request: the HTTP status and the `metav1.Status` body, built
/// as `k8s.io/apimachinery/pkg/api/errors` builds them, so `reason` and
/// `details` are what a client of the real API server sees
/// (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/>).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status, also the Status' `code`.
    pub code: u16,
    /// The `metav1.Status` object.
    pub status: Value,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>, details: Option<Value>) -> ApiError {
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": message.into(), "reason": reason, "code": code});
        if let Some(details) = details {
            status["details"] = details;
        }
        ApiError { code, status }
    }

    /// The Status' `reason` (`NotFound`, `Conflict`, ...).
    pub fn reason(&self) -> &str {
        self.status["reason"].as_str().unwrap_or_default()
    }

    fn details(resource: Resource, name: &str) -> Value {
        json!({"name": name, "group": GROUP, "kind": resource.plural()})
    }

    fn not_found(resource: Resource, name: &str) -> ApiError {
        let message = format!("{} {name:?} not found", resource.qualified());
        ApiError::new(404, "NotFound", message, Some(Self::details(resource, name)))
    }

    /// What the API server answers for a path it does not serve.
    fn no_such_path() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource", Some(json!({})))
    }

    fn already_exists(resource: Resource, name: &str) -> ApiError {
        let message = format!("{} {name:?} already exists", resource.qualified());
        ApiError::new(409, "AlreadyExists", message, Some(Self::details(resource, name)))
    }

    fn conflict(resource: Resource, name: &str, why: &str) -> ApiError {
        let message = format!("Operation cannot be fulfilled on {} {name:?}: {why}", resource.qualified());
        ApiError::new(409, "Conflict", message, Some(Self::details(resource, name)))
    }

    fn stale(resource: Resource, name: &str) -> ApiError {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `errors.NewInvalid`: 422 with one cause per field error, and the
    /// errors joined in the message (bracketed when more than one).
    fn invalid(group: &str, kind: &str, name: &str, causes: &[Cause]) -> ApiError {
        let errors: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let joined = if errors.len() == 1 { errors[0].clone() } else { format!("[{}]", errors.join(", ")) };
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {joined}"),
            Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        )
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message, None)
    }

    fn internal(message: &str) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
            Some(json!({"causes": [{"message": message}]})),
        )
    }

    fn expired(message: String) -> ApiError {
        ApiError::new(410, "Expired", message, None)
    }

    /// `storage.NewTooLargeResourceVersionError`.
    fn too_large(wanted: u64, current: u64) -> ApiError {
        ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {wanted}, current: {current}"),
            Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1})),
        )
    }
}

/// One field error of an `Invalid` answer.
struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

/// The `Apply` or `Update` operation of a `managedFields` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// A field path in `FieldsV1` notation: `f:<field>` for a struct or map
/// field, `k:{"name":"x"}` for the entry of a `listType=map` list.
type FieldPath = Vec<String>;
/// The fields one manager owns.
type FieldSet = BTreeSet<FieldPath>;

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
struct Managed {
    manager: String,
    operation: Operation,
    time: String,
    fields: FieldSet,
}

impl Managed {
    fn is(&self, manager: &str, operation: Operation) -> bool {
        self.manager == manager && self.operation == operation
    }

    /// How the API server names a manager in a conflict message
    /// (`printManager` in k8s.io/apimachinery's managedfields).
    fn describe(&self) -> String {
        match self.operation {
            Operation::Apply => format!("{:?}", self.manager),
            Operation::Update if self.time.is_empty() => format!("{:?} using {API_VERSION}", self.manager),
            Operation::Update => format!("{:?} using {API_VERSION} at {}", self.manager, self.time),
        }
    }
}

/// A stored object and who owns which of its fields.
#[derive(Debug, Clone)]
struct Stored {
    object: Value,
    managers: Vec<Managed>,
}

/// A committed change, kept for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    /// The object after the change (for DELETED, the last state, with the
    /// resourceVersion of the deletion).
    object: Value,
    /// The object before the change.
    previous: Option<Value>,
}

/// What a write asks for.
enum Write {
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply { config: Value, force: bool },
    /// POST.
    Create(Value),
    /// PUT.
    Replace(Value),
    /// `application/json-patch+json` (RFC 6902).
    JsonPatch(json_patch::Patch),
    /// `application/merge-patch+json` (RFC 7386).
    MergePatch(Value),
    /// DELETE, with the preconditions of its DeleteOptions.
    Delete { preconditions: Value },
}

/// What a write did.
struct Outcome {
    /// 200, or 201 when it created the object.
    code: u16,
    /// The answer body: the object, or a Status for DELETE.
    body: Value,
    before: Option<Value>,
    after: Option<Value>,
    /// False for a no-op: nothing was stored and no event sent.
    changed: bool,
}

/// The objects, the global resourceVersion counter and the change history.
struct Store {
    rv: u64,
    objects: BTreeMap<(Resource, String), Stored>,
    history: Vec<Change>,
    /// Changes up to this resourceVersion are no longer kept (compacted).
    compacted: u64,
    uids: u64,
}

/// A cluster's resourceVersion is never 0 (which means "any" in a
/// request): the fake starts where a young cluster might be, with the
/// history before compacted.
const FIRST_RESOURCE_VERSION: u64 = 1000;

impl Default for Store {
    fn default() -> Self {
        Store {
            rv: FIRST_RESOURCE_VERSION,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: FIRST_RESOURCE_VERSION,
            uids: 0,
        }
    }
}

/// Tollgate as the fake calls it when a configuration changes.
struct Probe {
    http: reqwest::Client,
    base: String,
}

/// The part of the fake that outlives a stop.
struct Inner {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watches to wait on.
    changes: watch::Sender<u64>,
    token: Mutex<String>,
    fail_patches: Mutex<usize>,
    seen: Mutex<Vec<Seen>>,
    probe: Mutex<Option<Arc<Probe>>>,
    probes: Mutex<Vec<(String, u16)>>,
    bookmark_every: Mutex<Duration>,
}

/// The listener and connections of a running fake.
struct Running {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The fake API server. Stored objects survive [`ApiServer::stop`] and
/// [`ApiServer::restart`], as etcd outlives kube-apiserver.
pub struct ApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Paths of the webhooks in a configuration object (`clientConfig.service.path`).
pub fn webhook_paths(object: Option<&Value>) -> Vec<String> {
    let hooks = object.and_then(|o| o["webhooks"].as_array()).cloned().unwrap_or_default();
    hooks.iter().filter_map(|h| h["clientConfig"]["service"]["path"].as_str().map(str::to_string)).collect()
}

/// Names of the webhooks in a configuration object, in order.
pub fn webhook_names(object: Option<&Value>) -> Vec<String> {
    let hooks = object.and_then(|o| o["webhooks"].as_array()).cloned().unwrap_or_default();
    hooks.iter().filter_map(|h| h["name"].as_str().map(str::to_string)).collect()
}

/// The managers in `metadata.managedFields`, as (manager, operation).
pub fn managers(object: &Value) -> Vec<(String, String)> {
    let entries = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| (e["manager"].as_str().unwrap_or_default().into(), e["operation"].as_str().unwrap_or_default().into()))
        .collect()
}

impl ApiServer {
    /// Starts the fake on a loopback port, accepting [`TOKEN`].
    pub async fn start() -> ApiServer {
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind the fake API server");
        let addr = listener.local_addr().unwrap();
        let server = ApiServer {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                changes: watch::Sender::new(FIRST_RESOURCE_VERSION),
                token: Mutex::new(TOKEN.into()),
                fail_patches: Mutex::new(0),
                seen: Mutex::new(Vec::new()),
                probe: Mutex::new(None),
                probes: Mutex::new(Vec::new()),
                // kube-apiserver sends a bookmark about once a minute.
                bookmark_every: Mutex::new(Duration::from_secs(60)),
            }),
            addr,
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server (bearer [`TOKEN`]) into `dir`
    /// and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> String {
        let file = dir.join("kubeconfig");
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 users:\n- name: tollgate\n  user:\n    token: {TOKEN}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tollgate\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .expect("write kubeconfig");
        file.to_str().unwrap().to_string()
    }

    /// The bearer token accepted from now on; any other gets 401.
    pub fn set_token(&self, token: &str) {
        *self.inner.token.lock().unwrap() = token.into();
    }

    /// Answers the next `n` PATCHes with 500 InternalError.
    pub fn fail_patches(&self, n: usize) {
        *self.inner.fail_patches.lock().unwrap() = n;
    }

    /// Sends watch bookmarks this often (60 s by default, like kube-apiserver).
    pub fn bookmark_every(&self, every: Duration) {
        *self.inner.bookmark_every.lock().unwrap() = every;
    }

    /// From now on, whenever a write over HTTP changes a configuration, calls
    /// every admission path it registers and every path it drops on
    /// `server`, as the real API server might at that instant, before
    /// answering the write.
    pub fn probe(&self, server: &super::Server) {
        let probe = Probe {
            http: super::client(&server.ca(), None),
            base: format!("https://localhost:{}", server.admission.port()),
        };
        *self.inner.probe.lock().unwrap() = Some(Arc::new(probe));
    }

    /// (path, HTTP status) of every probe call so far (0: no answer).
    pub fn probes(&self) -> Vec<(String, u16)> {
        self.inner.probes.lock().unwrap().clone()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// The stored object at `path` (`/apis/<group>/<version>/<plural>/<name>`).
    pub fn object(&self, path: &str) -> Option<Value> {
        let (resource, name) = locate(path).and_then(|(r, n)| Some((r, n?))).expect("an object path");
        self.inner.store.lock().unwrap().objects.get(&(resource, name)).map(|s| s.object.clone())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().unwrap().rv
    }

    /// Forgets the change history, as etcd compaction (every 5 minutes) or a
    /// restart of kube-apiserver's watch cache does: a watch from an older
    /// resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.inner.store.lock().unwrap();
        store.compacted = store.rv;
        store.history.clear();
    }

    /// Creates `object` as `manager` would with POST (`kubectl create`, or
    /// `kubectl apply` of a new object, whose manager is
    /// `kubectl-client-side-apply`): an `Update` operation.
    pub fn create_as(&self, manager: &str, object: Value) -> Result<Value, ApiError> {
        let resource = object["kind"].as_str().and_then(Resource::from_kind).expect("a webhook configuration kind");
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        self.write(resource, &name, manager, Write::Create(object), false).map(|o| o.body)
    }

    /// Server-side applies `config` as `manager`.
    pub fn apply_as(&self, manager: &str, config: Value, force: bool) -> Result<Value, ApiError> {
        let resource = config["kind"].as_str().and_then(Resource::from_kind).expect("a webhook configuration kind");
        let name = config["metadata"]["name"].as_str().expect("metadata.name").to_string();
        self.write(resource, &name, manager, Write::Apply { config, force }, false).map(|o| o.body)
    }

    /// Changes the object at `path` with `edit` and writes it back as
    /// `manager` (`kubectl edit`): an `Update` operation.
    pub fn edit_as(&self, manager: &str, path: &str, edit: impl FnOnce(&mut Value)) -> Result<Value, ApiError> {
        let (resource, name) = locate(path).and_then(|(r, n)| Some((r, n?))).expect("an object path");
        let mut object = self.object(path).ok_or_else(|| ApiError::not_found(resource, &name))?;
        edit(&mut object);
        self.write(resource, &name, manager, Write::Replace(object), false).map(|o| o.body)
    }

    /// Deletes the object at `path`, as another client would.
    pub fn delete(&self, path: &str) -> Result<Value, ApiError> {
        let (resource, name) = locate(path).and_then(|(r, n)| Some((r, n?))).expect("an object path");
        self.write(resource, &name, "", Write::Delete { preconditions: Value::Null }, false).map(|o| o.body)
    }

    fn write(
        &self,
        resource: Resource,
        name: &str,
        manager: &str,
        write: Write,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        self.inner.write(resource, name, manager, write, dry_run)
    }

    /// Stops accepting and closes every connection, open watches included,
    /// as a crashed or restarting API server does.
    pub async fn stop(&self) {
        let Some(running) = self.running.lock().unwrap().take() else { return };
        let _ = running.stop.send(true);
        running.accept.abort();
        let _ = running.accept.await;
        let connections = std::mem::take(&mut *running.connections.lock().unwrap());
        for connection in connections {
            connection.abort();
            let _ = connection.await;
        }
    }

    /// Listens again on the same port, with the objects kept. A restarted
    /// kube-apiserver rebuilds its watch cache from the current state, so the
    /// history is compacted: a watch resumed from before the outage gets
    /// `410 Gone` and must list again.
    pub async fn restart(&self) {
        assert!(self.running.lock().unwrap().is_none(), "restart() of a running fake API server");
        self.compact();
        // The old listener is closed; its port may take a moment to be free.
        let mut tries = 0;
        let listener = loop {
            match bind(self.addr) {
                Ok(listener) => break listener,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = watch::channel(false);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let inner = self.inner.clone();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let inner = inner.clone();
                let mut stopped = stopped.clone();
                let connection = tokio::spawn(async move {
                    let watches_stop = stopped.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        let stop = watches_stop.clone();
                        async move { Ok::<_, Infallible>(inner.handle(req, stop).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
                let mut list = tracked.lock().unwrap();
                list.retain(|c| !c.is_finished());
                list.push(connection);
            }
        });
        *self.running.lock().unwrap() = Some(Running { stop, accept, connections });
    }
}

/// A listener with SO_REUSEADDR, so a restart can take the same port while
/// closed connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// `(resource, name)` of a path under [`PREFIX`]; the name is absent for a
/// collection.
fn locate(path: &str) -> Option<(Resource, Option<String>)> {
    let rest = path.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let resource = Resource::from_plural(parts.next()?)?;
    match (parts.next(), parts.next()) {
        (None, _) | (Some(""), None) => Some((resource, None)),
        (Some(name), None) if !name.is_empty() => Some((resource, Some(name.to_string()))),
        _ => None,
    }
}

/// The time as the API server writes it (RFC 3339, seconds, UTC).
fn now() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let timestamp = k8s_openapi::jiff::Timestamp::from_second(seconds as i64).unwrap();
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The parts of a request the fake looks at.
struct Call {
    method: http::Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: String,
    accept: String,
    authorization: String,
    user_agent: String,
    body: Bytes,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// The field manager of a non-apply write: the `fieldManager` parameter,
    /// else the User-Agent up to its first `/`, as the API server infers it
    /// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#managers>).
    fn manager(&self) -> String {
        match self.param("fieldManager") {
            Some(manager) if !manager.is_empty() => manager.to_string(),
            _ => match self.user_agent.split('/').next() {
                Some(agent) if !agent.is_empty() => agent.to_string(),
                _ => "unknown".into(),
            },
        }
    }

    /// The client asked for `PartialObjectMetadata` (metadata-only watchers).
    fn metadata_only(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }
}

/// `application/x-www-form-urlencoded` pairs of a query string.
fn parse_query(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn respond(code: u16, body: &Value) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn refuse(error: &ApiError) -> http::Response<Body> {
    respond(error.code, &error.status)
}

/// The body kube-apiserver answers an unknown bearer token with, byte for
/// byte (`apierrors.NewUnauthorized("Unauthorized")`).
const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

impl Inner {
    async fn handle(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
        stop: watch::Receiver<bool>,
    ) -> http::Response<Body> {
        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let header = |name: http::header::HeaderName| {
            req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
        };
        let mut call = Call {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(parse_query).unwrap_or_default(),
            content_type: header(http::header::CONTENT_TYPE),
            accept: header(http::header::ACCEPT),
            authorization: header(http::header::AUTHORIZATION),
            user_agent: header(http::header::USER_AGENT),
            body: Bytes::new(),
        };
        // Recorded on arrival: a write is visible in the store before it is
        // answered (Tollgate is probed in between), and a test that sees the
        // object must see the request too.
        let index = {
            let mut seen = self.seen.lock().unwrap();
            let status = 0;
            seen.push(Seen {
                method: call.method.to_string(),
                target,
                content_type: call.content_type.clone(),
                status,
            });
            seen.len() - 1
        };
        call.body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let response = self.clone().route(&call, stop).await;
        self.seen.lock().unwrap()[index].status = response.status().as_u16();
        response
    }

    async fn route(self: Arc<Self>, call: &Call, stop: watch::Receiver<bool>) -> http::Response<Body> {
        // Authentication comes first: a token the server does not know is
        // 401 whatever the path; no credentials at all is the anonymous
        // user, which RBAC then refuses (403).
        // https://kubernetes.io/docs/reference/access-authn-authz/authentication/#anonymous-requests
        let anonymous = if call.authorization.is_empty() {
            true
        } else {
            let token = self.token.lock().unwrap().clone();
            if call.authorization.strip_prefix("Bearer ") != Some(token.as_str()) {
                let mut response = http::Response::new(Full::new(Bytes::from_static(UNAUTHORIZED.as_bytes())).boxed());
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                return response;
            }
            false
        };
        // Discovery and health, allowed to anyone (system:public-info-viewer).
        match call.path.as_str() {
            "/version" => {
                return respond(
                    200,
                    &json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0", "platform": "linux/amd64"}),
                );
            }
            "/healthz" | "/livez" | "/readyz" => {
                let mut response = http::Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
                response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                return response;
            }
            _ => {}
        }
        let Some((resource, name)) = locate(&call.path) else { return refuse(&ApiError::no_such_path()) };
        let watching = call.flag("watch");
        let verb = match (&call.method, &name) {
            (&http::Method::GET, Some(_)) => "get",
            (&http::Method::GET, None) if watching => "watch",
            (&http::Method::GET, None) => "list",
            (&http::Method::POST, _) => "create",
            (&http::Method::PUT, _) => "update",
            (&http::Method::PATCH, _) => "patch",
            (&http::Method::DELETE, Some(_)) => "delete",
            (&http::Method::DELETE, None) => "deletecollection",
            _ => "",
        };
        if anonymous {
            return refuse(&forbidden(resource, name.as_deref(), verb));
        }
        match (&call.method, name) {
            (&http::Method::GET, Some(name)) => self.get(resource, &name, call),
            (&http::Method::GET, None) if watching => self.watch(resource, call, stop),
            (&http::Method::GET, None) => self.list(resource, call).await,
            (&http::Method::POST, None) => match parse_json(&call.body) {
                Ok(object) => {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    self.write_http(resource, &name, &call.manager(), Write::Create(object), call.dry_run()).await
                }
                Err(error) => refuse(&error),
            },
            (&http::Method::PUT, Some(name)) => match parse_json(&call.body) {
                Ok(object) => {
                    self.write_http(resource, &name, &call.manager(), Write::Replace(object), call.dry_run()).await
                }
                Err(error) => refuse(&error),
            },
            (&http::Method::PATCH, Some(name)) => self.patch(resource, &name, call).await,
            (&http::Method::DELETE, Some(name)) => {
                let options = if call.body.is_empty() { json!({}) } else { parse_json(&call.body).unwrap_or_default() };
                let dry_run =
                    call.dry_run() || options["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All"));
                let write = Write::Delete { preconditions: options["preconditions"].clone() };
                self.write_http(resource, &name, &call.manager(), write, dry_run).await
            }
            (method, _) => refuse(&ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on resources of kind {:?}", resource.qualified()),
                Some(json!({"group": GROUP, "kind": resource.plural()})),
            )),
        }
    }

    fn get(&self, resource: Resource, name: &str, call: &Call) -> http::Response<Body> {
        let store = self.store.lock().unwrap();
        match store.objects.get(&(resource, name.to_string())) {
            Some(stored) => respond(200, &shape_object(&stored.object, call.metadata_only())),
            None => refuse(&ApiError::not_found(resource, name)),
        }
    }

    /// PATCH: server-side apply, JSON patch or JSON merge patch.
    async fn patch(&self, resource: Resource, name: &str, call: &Call) -> http::Response<Body> {
        {
            let mut fail = self.fail_patches.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return refuse(&ApiError::internal("etcd is having a bad day"));
            }
        }
        let media_type = call.content_type.split(';').next().unwrap_or_default().trim();
        let manager = call.param("fieldManager").unwrap_or_default();
        // ValidatePatchOptions in k8s.io/apimachinery.
        let options_invalid = |field: &str, reason: &'static str, message: &str| {
            refuse(&ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[Cause { reason, field: field.into(), message: message.into() }],
            ))
        };
        let write = match media_type {
            "application/apply-patch+yaml" => {
                if manager.is_empty() {
                    return options_invalid(
                        "fieldManager",
                        "FieldValueRequired",
                        "Required value: is required for apply patch",
                    );
                }
                // JSON is YAML; try the stricter parser first for its errors.
                let config = match serde_json::from_slice::<Value>(&call.body) {
                    Ok(config) => config,
                    Err(_) => match serde_yaml::from_slice::<Value>(&call.body) {
                        Ok(config) => config,
                        Err(error) => return refuse(&ApiError::bad_request(format!("error decoding YAML: {error}"))),
                    },
                };
                Write::Apply { config, force: call.flag("force") }
            }
            "application/json-patch+json" | "application/merge-patch+json" if call.param("force").is_some() => {
                return options_invalid(
                    "force",
                    "FieldValueForbidden",
                    "Forbidden: may not be specified for non-apply patch",
                );
            }
            "application/json-patch+json" => match serde_json::from_slice::<json_patch::Patch>(&call.body) {
                Ok(patch) => Write::JsonPatch(patch),
                Err(error) => return refuse(&ApiError::bad_request(error.to_string())),
            },
            "application/merge-patch+json" => match parse_json(&call.body) {
                Ok(patch) => Write::MergePatch(patch),
                Err(error) => return refuse(&error),
            },
            // The real server also takes strategic-merge-patch+json; this
            // fake does not implement it and says which types it takes.
            _ => {
                return refuse(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    None,
                ));
            }
        };
        let manager = if media_type == "application/apply-patch+yaml" { manager.to_string() } else { call.manager() };
        self.write_http(resource, name, &manager, write, call.dry_run()).await
    }

    /// A write over HTTP: stored, then Tollgate probed, then answered.
    async fn write_http(
        &self,
        resource: Resource,
        name: &str,
        manager: &str,
        write: Write,
        dry_run: bool,
    ) -> http::Response<Body> {
        match self.write(resource, name, manager, write, dry_run) {
            Ok(outcome) => {
                if outcome.changed && !dry_run {
                    let mut paths = webhook_paths(outcome.after.as_ref());
                    for dropped in webhook_paths(outcome.before.as_ref()) {
                        if !paths.contains(&dropped) {
                            paths.push(dropped);
                        }
                    }
                    self.call_tollgate(paths).await;
                }
                respond(outcome.code, &outcome.body)
            }
            Err(error) => refuse(&error),
        }
    }

    /// Calls each admission path on Tollgate, as the API server could now.
    async fn call_tollgate(&self, paths: Vec<String>) {
        let Some(probe) = self.probe.lock().unwrap().clone() else { return };
        for path in paths {
            let review = super::configmap_review("probe");
            let response = probe.http.post(format!("{}{path}", probe.base)).json(&review).send().await;
            let code = response.map(|r| r.status().as_u16()).unwrap_or(0);
            self.probes.lock().unwrap().push((path, code));
        }
    }

    fn write(
        &self,
        resource: Resource,
        name: &str,
        manager: &str,
        write: Write,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        let mut store = self.store.lock().unwrap();
        let outcome = store.write(resource, name, manager, write, dry_run)?;
        if outcome.changed && !dry_run {
            self.changes.send_replace(store.rv);
        }
        Ok(outcome)
    }

    /// LIST, with the resourceVersion semantics of
    /// <https://kubernetes.io/docs/reference/using-api/api-concepts/#the-resourceversion-parameter>:
    /// unset or `0` is the latest state; with `limit`, or with
    /// `resourceVersionMatch=Exact`, exactly the state at that version
    /// (410 Expired once compacted); `continue` pages through that state.
    async fn list(&self, resource: Resource, call: &Call) -> http::Response<Body> {
        let selector = match Selector::parse(call) {
            Ok(selector) => selector,
            Err(error) => return refuse(&error),
        };
        let limit = call.param("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
        let (at, after_name) = match call.param("continue").filter(|c| !c.is_empty()) {
            Some(token) => match decode_continue(token) {
                Some((rv, name)) => (Some(rv), Some(name)),
                None => {
                    return refuse(&ApiError::bad_request(
                        "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                    ));
                }
            },
            None => {
                let wanted = match call.param("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
                    Some(rv) => match rv.parse::<u64>() {
                        Ok(rv) => Some(rv),
                        Err(_) => return refuse(&ApiError::bad_request(format!("invalid resource version: {rv}"))),
                    },
                    None => None,
                };
                if let Some(rv) = wanted
                    && let Err(error) = self.wait_for(rv).await
                {
                    return refuse(&error);
                }
                let exact = call.param("resourceVersionMatch") == Some("Exact") || limit.is_some();
                (wanted.filter(|_| exact), None)
            }
        };
        let store = self.store.lock().unwrap();
        let (rv, objects) = match at {
            Some(rv) => match store.snapshot(resource, rv) {
                Some(objects) => (rv, objects),
                None => {
                    return refuse(&ApiError::expired(if after_name.is_some() {
                        "The provided continue parameter is too old to display a consistent list result. You can \
                         start a new list without the continue parameter."
                            .into()
                    } else {
                        format!("too old resource version: {rv} ({})", store.compacted)
                    }));
                }
            },
            None => (store.rv, store.current(resource)),
        };
        drop(store);
        let mut matching: Vec<Value> = objects
            .into_iter()
            .filter(|(name, object)| after_name.as_ref().is_none_or(|after| name > after) && selector.matches(object))
            .map(|(_, object)| object)
            .collect();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(limit) = limit
            && matching.len() > limit
        {
            let rest = matching.split_off(limit);
            let last = matching.last().and_then(|o| o["metadata"]["name"].as_str()).unwrap_or_default();
            metadata["continue"] = json!(encode_continue(rv, last));
            metadata["remainingItemCount"] = json!(rest.len());
        }
        // Items of a list carry no kind or apiVersion of their own.
        let items: Vec<Value> = matching
            .iter()
            .map(|o| {
                let mut item = shape_object(o, call.metadata_only());
                if let Some(map) = item.as_object_mut() {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                item
            })
            .collect();
        let (api_version, kind) = if call.metadata_only() {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
        } else {
            (API_VERSION.to_string(), format!("{}List", resource.kind()))
        };
        respond(200, &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}))
    }

    /// Waits (a little) until the store reaches `rv`, as a read of a
    /// resourceVersion the server has not seen yet does; 504 otherwise
    /// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#unavailable-resource-versions>).
    async fn wait_for(&self, rv: u64) -> Result<(), ApiError> {
        let mut changes = self.changes.subscribe();
        let reached = tokio::time::timeout(TOO_LARGE_WAIT, changes.wait_for(|current| *current >= rv)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::too_large(rv, self.store.lock().unwrap().rv)),
        }
    }

    /// WATCH: newline-delimited `{"type": ..., "object": ...}` events over a
    /// chunked response that stays open until `timeoutSeconds` or the server
    /// stops, as in
    /// <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>.
    ///
    /// - `resourceVersion` unset or `0`: synthetic ADDED events for what
    ///   exists, then changes; any other: changes after it ("Start at
    ///   Exact"), or, when the history no longer reaches back that far, one
    ///   ERROR event with a 410 Expired Status (`too old resource version`),
    ///   as kube-apiserver's watch cache answers (HTTP 200, then the error
    ///   event, then the end of the stream).
    /// - `sendInitialEvents=true` (streaming lists, which require
    ///   `allowWatchBookmarks=true` and `resourceVersionMatch=NotOlderThan`):
    ///   ADDED events, then a BOOKMARK annotated
    ///   `k8s.io/initial-events-end: "true"`.
    /// - `allowWatchBookmarks=true`: a BOOKMARK with the current
    ///   resourceVersion now and then ([`ApiServer::bookmark_every`]).
    /// - `fieldSelector`/`labelSelector`: an object entering the selection is
    ///   ADDED, one leaving it DELETED.
    fn watch(
        self: Arc<Self>,
        resource: Resource,
        call: &Call,
        mut stop: watch::Receiver<bool>,
    ) -> http::Response<Body> {
        let selector = match Selector::parse(call) {
            Ok(selector) => selector,
            Err(error) => return refuse(&error),
        };
        let bookmarks = call.flag("allowWatchBookmarks");
        let initial_events = call.flag("sendInitialEvents");
        let version_match = call.param("resourceVersionMatch").filter(|m| !m.is_empty());
        // ValidateListOptions for watches.
        let mut causes = Vec::new();
        if initial_events {
            if version_match != Some("NotOlderThan") {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    field: "resourceVersionMatch".into(),
                    message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                        .into(),
                });
            }
            if !bookmarks {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    field: "allowWatchBookmarks".into(),
                    message: "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".into(),
                });
            }
        } else if version_match.is_some() {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "resourceVersionMatch".into(),
                message: "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .into(),
            });
        }
        if !causes.is_empty() {
            return refuse(&ApiError::invalid("meta.k8s.io", "ListOptions", "", &causes));
        }
        let from = match call.param("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => Some(rv),
                Err(_) => return refuse(&ApiError::bad_request(format!("invalid resource version: {rv}"))),
            },
            None => None,
        };
        let timeout = call
            .param("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let metadata_only = call.metadata_only();
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
        let inner = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let send_line = |event: Value| Bytes::from(format!("{event}\n"));
            // Where the stream starts, and what is sent before changes.
            let mut first = Vec::new();
            let start = match from {
                Some(rv) if !initial_events => {
                    let current = inner.store.lock().unwrap().rv;
                    if rv > current
                        && let Err(error) = inner.wait_for(rv).await
                    {
                        let _ = sender.send_data(send_line(json!({"type": "ERROR", "object": error.status}))).await;
                        return;
                    }
                    let compacted = inner.store.lock().unwrap().compacted;
                    if rv < compacted {
                        let error = ApiError::expired(format!("too old resource version: {rv} ({compacted})"));
                        let _ = sender.send_data(send_line(json!({"type": "ERROR", "object": error.status}))).await;
                        return;
                    }
                    rv
                }
                _ => {
                    let store = inner.store.lock().unwrap();
                    for (_, object) in store.current(resource) {
                        if selector.matches(&object) {
                            first.push(json!({"type": "ADDED", "object": shape_object(&object, metadata_only)}));
                        }
                    }
                    if initial_events {
                        let mut mark = bookmark(resource, store.rv, metadata_only);
                        mark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                        first.push(json!({"type": "BOOKMARK", "object": mark}));
                    }
                    store.rv
                }
            };
            for event in first {
                if sender.send_data(send_line(event)).await.is_err() {
                    return;
                }
            }
            let mut changes = inner.changes.subscribe();
            if *stop.borrow_and_update() {
                return;
            }
            let mut last = start;
            let every = *inner.bookmark_every.lock().unwrap();
            let mut next_bookmark = tokio::time::Instant::now() + every;
            loop {
                let (events, current, lost) = {
                    let store = inner.store.lock().unwrap();
                    let lost = store.compacted > last;
                    let events: Vec<Change> =
                        store.history.iter().filter(|c| c.rv > last && c.resource == resource).cloned().collect();
                    (events, store.rv, lost)
                };
                if lost {
                    // The history this watch needed is gone: it cannot go on.
                    let error = ApiError::expired(format!("too old resource version: {last} ({current})"));
                    let _ = sender.send_data(send_line(json!({"type": "ERROR", "object": error.status}))).await;
                    return;
                }
                for change in events {
                    if let Some(event) = selector.event(&change, metadata_only)
                        && sender.send_data(send_line(event)).await.is_err()
                    {
                        return;
                    }
                }
                last = current;
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                        next_bookmark += every;
                        let event = json!({"type": "BOOKMARK", "object": bookmark(resource, last, metadata_only)});
                        if sender.send_data(send_line(event)).await.is_err() {
                            return;
                        }
                    }
                    // The stop channel only ever changes to true.
                    _ = stop.changed() => return,
                }
            }
        });
        let mut response = http::Response::new(body.boxed());
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        response
    }
}

/// A BOOKMARK's object: only kind, apiVersion and resourceVersion.
fn bookmark(resource: Resource, rv: u64, metadata_only: bool) -> Value {
    let (api_version, kind) =
        if metadata_only { ("meta.k8s.io/v1", "PartialObjectMetadata") } else { (API_VERSION, resource.kind()) };
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}})
}

/// The object as asked: whole, or its metadata as `PartialObjectMetadata`.
fn shape_object(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

fn encode_continue(rv: u64, name: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": name}).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    let raw: Value = serde_json::from_slice(&bytes?).ok()?;
    Some((raw["rv"].as_u64()?, raw["start"].as_str()?.to_string()))
}

fn forbidden(resource: Resource, name: Option<&str>, verb: &str) -> ApiError {
    let why = format!(
        "User \"system:anonymous\" cannot {verb} resource {:?} in API group {GROUP:?} at the cluster scope",
        resource.plural()
    );
    let message = match name {
        Some(name) => format!("{} {name:?} is forbidden: {why}", resource.qualified()),
        None => format!("{} is forbidden: {why}", resource.qualified()),
    };
    let mut details = json!({"group": GROUP, "kind": resource.plural()});
    if let Some(name) = name {
        details["name"] = json!(name);
    }
    ApiError::new(403, "Forbidden", message, Some(details))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
}

/// A `fieldSelector` and `labelSelector`.
#[derive(Default)]
struct Selector {
    /// (field, wanted, equal) of `metadata.name=x` / `metadata.name!=x`.
    fields: Vec<(String, String, bool)>,
    labels: Vec<LabelRequirement>,
}

enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Webhook configurations support the generic field selectors,
    /// `metadata.name` and `metadata.namespace`; any other field is refused.
    fn parse(call: &Call) -> Result<Selector, ApiError> {
        let mut selector = Selector::default();
        for term in call.param("fieldSelector").unwrap_or_default().split(',').filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            selector.fields.push((field.to_string(), value.to_string(), equal));
        }
        let labels = call.param("labelSelector").unwrap_or_default();
        for term in split_terms(labels).into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::DoesNotExist(key.trim().into())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                LabelRequirement::NotIn(key.trim().into(), set_values(values))
            } else if let Some((key, values)) = term.split_once(" in ") {
                LabelRequirement::In(key.trim().into(), set_values(values))
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelRequirement::Equals(key.trim().into(), value.trim().into())
            } else {
                LabelRequirement::Exists(term)
            };
            selector.labels.push(requirement);
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let fields_match = self.fields.iter().all(|(field, wanted, equal)| {
            let actual = match field.as_str() {
                "metadata.name" => object["metadata"]["name"].as_str().unwrap_or_default(),
                _ => "",
            };
            (actual == wanted) == *equal
        });
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::DoesNotExist(k) => label(k).is_none(),
        });
        fields_match && labels_match
    }

    /// The event a watcher with this selector gets for `change`, if any.
    fn event(&self, change: &Change, metadata_only: bool) -> Option<Value> {
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let kind = match change.kind {
            "ADDED" if now => "ADDED",
            "MODIFIED" if now && before => "MODIFIED",
            "MODIFIED" if now => "ADDED",
            "MODIFIED" if before => "DELETED",
            "DELETED" if before || now => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": shape_object(&change.object, metadata_only)}))
    }
}

/// Splits a label selector at the commas outside parentheses.
fn split_terms(text: &str) -> Vec<String> {
    let (mut terms, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
}

fn set_values(text: &str) -> Vec<String> {
    text.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(|v| v.trim().to_string()).collect()
}

impl Store {
    /// `(name, object)` of every stored object of `resource`, by name.
    fn current(&self, resource: Resource) -> Vec<(String, Value)> {
        self.objects
            .iter()
            .filter(|((r, _), _)| *r == resource)
            .map(|((_, name), stored)| (name.clone(), stored.object.clone()))
            .collect()
    }

    /// The objects of `resource` as they were at `rv`, rebuilt by undoing
    /// later changes; `None` once the history no longer reaches back there.
    fn snapshot(&self, resource: Resource, rv: u64) -> Option<Vec<(String, Value)>> {
        if rv < self.compacted || rv > self.rv {
            return None;
        }
        let mut objects: BTreeMap<String, Value> = self.current(resource).into_iter().collect();
        for change in self.history.iter().rev().filter(|c| c.rv > rv && c.resource == resource) {
            let name = change.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            match &change.previous {
                Some(previous) => objects.insert(name, previous.clone()),
                None => objects.remove(&name),
            };
        }
        Some(objects.into_iter().collect())
    }

    /// Every write, as the operations of the resource document them
    /// (<https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/validating-webhook-configuration-v1/#operations>):
    /// POST answers 201, or 409 AlreadyExists; PUT answers 404 for an
    /// absent object (these resources are not created by update) and 409
    /// Conflict when the body's resourceVersion is stale; JSON and merge
    /// patches answer 404 for an absent object; apply creates it (201).
    fn write(
        &mut self,
        resource: Resource,
        name: &str,
        manager: &str,
        write: Write,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        let key = (resource, name.to_string());
        let before = self.objects.get(&key).cloned();
        let (object, managers) = match write {
            Write::Delete { preconditions } => return self.delete(resource, name, before, &preconditions, dry_run),
            Write::Apply { config, force } => apply(resource, name, before.as_ref(), &config, manager, force)?,
            Write::Create(object) => {
                if object["metadata"]["name"].as_str().unwrap_or_default().is_empty() {
                    return Err(ApiError::invalid(
                        GROUP,
                        resource.kind(),
                        "",
                        &[Cause {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
                if before.is_some() {
                    return Err(ApiError::already_exists(resource, name));
                }
                if !object["metadata"]["resourceVersion"].as_str().unwrap_or_default().is_empty() {
                    return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
                }
                update(resource, name, None, object, manager)?
            }
            Write::Replace(object) => {
                // Webhook configurations cannot be created by PUT.
                let Some(stored) = &before else { return Err(ApiError::not_found(resource, name)) };
                let wanted = object["metadata"]["resourceVersion"].as_str().unwrap_or_default();
                if !wanted.is_empty() && wanted != stored.object["metadata"]["resourceVersion"] {
                    return Err(ApiError::stale(resource, name));
                }
                update(resource, name, Some(stored), object, manager)?
            }
            Write::JsonPatch(patch) => {
                let Some(stored) = &before else { return Err(ApiError::not_found(resource, name)) };
                let mut object = stored.object.clone();
                if json_patch::patch(&mut object, &patch.0).is_err() {
                    // kube-apiserver answers any failed operation, a failed
                    // `test` included, with NewGenericServerResponse(422,
                    // ...): reason Invalid, this fixed message, empty
                    // details; the cause is not passed on
                    // (https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go,
                    // applyJSPatch; the message is from
                    // staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go).
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "the server rejected our request due to an error in our request",
                        Some(json!({})),
                    ));
                }
                update(resource, name, Some(stored), object, manager)?
            }
            Write::MergePatch(patch) => {
                let Some(stored) = &before else { return Err(ApiError::not_found(resource, name)) };
                let mut object = stored.object.clone();
                json_patch::merge(&mut object, &patch);
                update(resource, name, Some(stored), object, manager)?
            }
        };
        self.finish(resource, name, before, object, managers, manager, dry_run)
    }

    /// Defaults, ownership clean-up, system fields, validation, and the
    /// commit unless nothing changed. System fields as ObjectMeta documents
    /// them (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/>):
    /// `uid` and `creationTimestamp` set at creation and kept; `generation`
    /// 1 at creation, plus one whenever the webhooks (the desired state)
    /// change; `resourceVersion` from the global counter at every stored
    /// change. A write that changes nothing is not stored: same
    /// resourceVersion, no watch event.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        resource: Resource,
        name: &str,
        before: Option<Stored>,
        mut object: Value,
        mut managers: Vec<Managed>,
        manager: &str,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        object["apiVersion"] = json!(API_VERSION);
        object["kind"] = json!(resource.kind());
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        default_object(resource, &mut object);
        // Nobody owns what no longer exists; a manager owning nothing is
        // dropped from managedFields.
        for entry in &mut managers {
            entry.fields.retain(|path| value_at(&object, path).is_some());
        }
        managers.retain(|entry| !entry.fields.is_empty());
        // An entry keeps its time unless its fields changed in this write.
        let now = now();
        for entry in &mut managers {
            let old = before
                .as_ref()
                .and_then(|b| b.managers.iter().find(|m| m.manager == entry.manager && m.operation == entry.operation));
            match old {
                Some(old) if old.fields == entry.fields => entry.time = old.time.clone(),
                _ if entry.manager == manager || entry.time.is_empty() => entry.time = now.clone(),
                _ => {}
            }
        }
        let webhooks_changed = before.as_ref().is_some_and(|b| b.object.get("webhooks") != object.get("webhooks"));
        let metadata = object["metadata"].as_object_mut().unwrap();
        if managers.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), render_managed(&managers));
        }
        metadata.insert("name".into(), json!(name));
        match &before {
            Some(stored) => {
                let old = &stored.object["metadata"];
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    metadata.insert(field.into(), old[field].clone());
                }
                // The generation counts changes of the webhooks (the spec).
                let generation = old["generation"].as_u64().unwrap_or(1);
                metadata.insert("generation".into(), json!(generation + u64::from(webhooks_changed)));
            }
            None => {
                self.uids += 1;
                let uid = format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    std::process::id(),
                    (self.uids >> 16) & 0xffff,
                    (self.uids >> 4) & 0xfff,
                    self.uids & 0xfff,
                    self.rv + 1
                );
                metadata.insert("uid".into(), json!(uid));
                metadata.insert("creationTimestamp".into(), json!(now));
                metadata.remove("resourceVersion");
                metadata.insert("generation".into(), json!(1));
            }
        }
        let causes = validate(&object);
        if !causes.is_empty() {
            return Err(ApiError::invalid(GROUP, resource.kind(), name, &causes));
        }
        let previous = before.as_ref().map(|b| b.object.clone());
        if previous.as_ref() == Some(&object) {
            // A no-op write is not written: same resourceVersion, no event.
            return Ok(Outcome {
                code: 200,
                body: object.clone(),
                before: previous,
                after: Some(object),
                changed: false,
            });
        }
        let code = if before.is_some() { 200 } else { 201 };
        if dry_run {
            return Ok(Outcome { code, body: object.clone(), before: previous, after: Some(object), changed: true });
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert((resource, name.to_string()), Stored { object: object.clone(), managers });
        self.history.push(Change {
            rv: self.rv,
            resource,
            kind: if before.is_some() { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
            previous: previous.clone(),
        });
        Ok(Outcome { code, body: object.clone(), before: previous, after: Some(object), changed: true })
    }

    /// DELETE: 404 when absent; 409 when a precondition (uid,
    /// resourceVersion) fails; else 200 with a Success Status naming the
    /// object (the generic registry returns no deleted object for these
    /// resources), and a DELETED event at a new resourceVersion
    /// (<https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/validating-webhook-configuration-v1/#delete-delete-a-validatingwebhookconfiguration>).
    fn delete(
        &mut self,
        resource: Resource,
        name: &str,
        before: Option<Stored>,
        preconditions: &Value,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        let Some(stored) = before else { return Err(ApiError::not_found(resource, name)) };
        let meta = &stored.object["metadata"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(wanted) = preconditions[field].as_str()
                && wanted != meta[field].as_str().unwrap_or_default()
            {
                let why = format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {}",
                    meta[field].as_str().unwrap_or_default()
                );
                return Err(ApiError::conflict(resource, name, &why));
            }
        }
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "details": {"name": name, "group": GROUP, "kind": resource.plural(), "uid": meta["uid"]}});
        if !dry_run {
            self.rv += 1;
            let mut last = stored.object.clone();
            last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.objects.remove(&(resource, name.to_string()));
            self.history.push(Change {
                rv: self.rv,
                resource,
                kind: "DELETED",
                object: last,
                previous: Some(stored.object.clone()),
            });
        }
        Ok(Outcome { code: 200, body, before: Some(stored.object), after: None, changed: true })
    }
}

/// Server-side apply of `config` by `manager`
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>):
///
/// - a field the config sets that another manager owns with a different
///   value is a conflict: 409 Conflict with one `FieldManagerConflict` cause
///   per field, unless `force`, which takes the field from every other
///   manager (#conflicts);
/// - managers setting the same value share the field (#field-management);
/// - the config is merged into the object: structs and maps by key,
///   `listType=map` lists (`webhooks`, `matchConditions`) by their key
///   `name`, atomic lists and selectors replaced whole (#merge-strategy);
/// - a field the manager applied last time and not now is removed, unless
///   another manager owns it or something below it; an entry only others
///   own is never touched (#field-management, #merge-strategy);
/// - the manager's `Apply` entry then owns exactly what the config sets.
///
/// The object is created when absent; `metadata.managedFields` may not be
/// sent (400), and a `metadata.resourceVersion` in the config is a
/// precondition (409 when stale).
fn apply(
    resource: Resource,
    name: &str,
    before: Option<&Stored>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<(Value, Vec<Managed>), ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("error decoding YAML: the body is not an object"));
    }
    check_type(resource, config)?;
    if !config["metadata"]["managedFields"].is_null() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    check_name(name, config)?;
    let wanted_rv = config["metadata"]["resourceVersion"].as_str().unwrap_or_default();
    if !wanted_rv.is_empty() {
        match before {
            Some(stored) if stored.object["metadata"]["resourceVersion"] == wanted_rv => {}
            Some(_) => return Err(ApiError::stale(resource, name)),
            None => return Err(ApiError::not_found(resource, name)),
        }
    }
    let live = match before {
        Some(stored) => stored.object.clone(),
        None => json!({"apiVersion": API_VERSION, "kind": resource.kind(), "metadata": {"name": name}}),
    };
    let mut managers = before.map(|b| b.managers.clone()).unwrap_or_default();
    let applied = fields_of(config);
    let mine = |m: &Managed| m.is(manager, Operation::Apply);

    let mut conflicts: Vec<(usize, FieldPath)> = Vec::new();
    for (index, other) in managers.iter().enumerate().filter(|(_, m)| !mine(m)) {
        for path in other.fields.intersection(&applied) {
            // An entry of a keyed list is identified, not valued: applying
            // it again never conflicts; its fields might.
            if is_entry(path) {
                continue;
            }
            if let Some(current) = value_at(&live, path)
                && Some(current) != value_at(config, path)
            {
                conflicts.push((index, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(apply_conflict(&managers, &conflicts));
    }
    for (index, path) in &conflicts {
        managers[*index].fields.remove(path);
    }

    let mut merged = merge_object(live.as_object().unwrap(), config.as_object().unwrap(), &mut Vec::new());
    let previous = managers.iter().find(|m| mine(m)).map(|m| m.fields.clone()).unwrap_or_default();
    let others: Vec<&FieldPath> = managers.iter().filter(|m| !mine(m)).flat_map(|m| m.fields.iter()).collect();
    // Whole entries first: their fields then have nothing left to remove.
    // The key field of an entry that stays is part of its identity, never
    // removed alone.
    let mut dropped: Vec<&FieldPath> = previous.difference(&applied).collect();
    dropped.sort_by_key(|path| path.len());
    for path in dropped {
        if !others.iter().any(|owned| owned.starts_with(path)) && !is_key_field(path) {
            remove_at(&mut merged, path);
        }
    }
    match managers.iter_mut().find(|m| mine(m)) {
        Some(entry) => entry.fields = applied,
        None => managers.push(Managed {
            manager: manager.into(),
            operation: Operation::Apply,
            time: String::new(),
            fields: applied,
        }),
    }
    Ok((merged, managers))
}

/// Ownership after a non-apply write (POST, PUT, JSON or merge patch) by
/// `manager`, an `Update` operation
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#apply-and-update>):
/// it never conflicts; every field it adds or changes becomes its own and
/// no one else's, and a field it removes is no longer owned by anyone.
/// Defaults are applied first, so it owns the defaulted fields too, as
/// with kubectl's client-side apply.
///
/// `metadata.managedFields` in the body, when it differs from the stored
/// one, replaces it, and a list of one empty entry clears it; an absent or
/// empty list keeps it (#clearing-managedfields).
fn update(
    resource: Resource,
    name: &str,
    before: Option<&Stored>,
    mut object: Value,
    manager: &str,
) -> Result<(Value, Vec<Managed>), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body is not an object"));
    }
    check_type(resource, &object)?;
    check_name(name, &object)?;
    default_object(resource, &mut object);
    let stored_list = before.map(|b| b.object["metadata"]["managedFields"].clone()).unwrap_or_default();
    let mut managers = match &object["metadata"]["managedFields"] {
        Value::Array(list) if list.len() == 1 && list[0] == json!({}) => Vec::new(),
        Value::Array(list) if !list.is_empty() && object["metadata"]["managedFields"] != stored_list => {
            parse_managed(list)
        }
        _ => before.map(|b| b.managers.clone()).unwrap_or_default(),
    };
    let old = before.map(|b| b.object.clone()).unwrap_or_else(|| json!({}));
    let old_fields = fields_of(&old);
    let new_fields = fields_of(&object);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| !old_fields.contains(*p) || (!is_entry(p) && value_at(&old, p) != value_at(&object, p)))
        .cloned()
        .collect();
    let removed: Vec<&FieldPath> = old_fields.difference(&new_fields).collect();
    for entry in &mut managers {
        entry.fields.retain(|p| !removed.iter().any(|r| p.starts_with(r)));
        if !entry.is(manager, Operation::Update) {
            entry.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        match managers.iter_mut().find(|m| m.is(manager, Operation::Update)) {
            Some(entry) => entry.fields.extend(changed),
            None => managers.push(Managed {
                manager: manager.into(),
                operation: Operation::Update,
                time: String::new(),
                fields: changed,
            }),
        }
    }
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("managedFields");
    }
    Ok((object, managers))
}

/// `apiVersion` and `kind` must name the resource of the URL.
fn check_type(resource: Resource, object: &Value) -> Result<(), ApiError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    if kind.is_empty() {
        return Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{object}'")));
    }
    if api_version != API_VERSION || kind != resource.kind() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) or kind ({kind}) does not match the expected \
             ({API_VERSION}, {})",
            resource.kind()
        )));
    }
    Ok(())
}

fn check_name(name: &str, object: &Value) -> Result<(), ApiError> {
    match object["metadata"]["name"].as_str() {
        Some(given) if given != name => Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

/// The 409 of an apply conflict (`NewConflictError` in
/// k8s.io/apimachinery's managedfields).
fn apply_conflict(managers: &[Managed], conflicts: &[(usize, FieldPath)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(index, path)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", managers[*index].describe()),
                   "field": path_string(path)})
        })
        .collect();
    let message = if let [(index, path)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {}: {}", managers[*index].describe(), path_string(path))
    } else {
        let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (index, path) in conflicts {
            by_manager.entry(managers[*index].describe()).or_default().push(path_string(path));
        }
        let lines: Vec<String> = by_manager
            .iter()
            .flat_map(|(manager, paths)| {
                std::iter::once(format!("conflicts with {manager}:")).chain(paths.iter().map(|p| format!("- {p}")))
            })
            .collect();
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    ApiError::new(409, "Conflict", message, Some(json!({"causes": causes})))
}

/// A path as structured-merge-diff prints it: `.webhooks[name="x"].timeoutSeconds`.
fn path_string(path: &[String]) -> String {
    path.iter()
        .map(|element| {
            if let Some(field) = element.strip_prefix("f:") {
                format!(".{field}")
            } else if let Some(key) = element.strip_prefix("k:") {
                let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            } else {
                element.clone()
            }
        })
        .collect()
}

/// How the fields under a path merge, by the field names leading to it
/// (the `+listType`/`+structType` markers of k8s.io/api admissionregistration/v1
/// and meta/v1).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Topology {
    /// Struct or map merged key by key (the default for objects).
    Granular,
    /// Replaced whole, owned whole (every list without a listType=map).
    Atomic,
    /// `listType=map`, keyed by this field.
    Keyed(&'static str),
}

fn topology(names: &[String]) -> Topology {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match names.as_slice() {
        ["webhooks"] | ["webhooks", "matchConditions"] => Topology::Keyed("name"),
        ["metadata", "ownerReferences"] => Topology::Keyed("uid"),
        // LabelSelector is +structType=atomic.
        ["webhooks", "namespaceSelector" | "objectSelector"] => Topology::Atomic,
        _ => Topology::Granular,
    }
}

/// Fields the API server does not track in managedFields.
fn untracked(names: &[String], key: &str) -> bool {
    match names {
        [] => matches!(key, "apiVersion" | "kind" | "status"),
        [only] if only == "metadata" => matches!(
            key,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
        ),
        _ => false,
    }
}

/// Every field path `value` sets: leaves, atomic lists and selectors, and
/// each entry of a keyed list (the `.` of FieldsV1) with its fields.
fn fields_of(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(map) = value {
        collect_object(map, &mut Vec::new(), &mut Vec::new(), &mut out);
    }
    out
}

fn collect_object(map: &Map<String, Value>, path: &mut FieldPath, names: &mut Vec<String>, out: &mut FieldSet) {
    for (key, child) in map {
        if untracked(names, key) {
            continue;
        }
        path.push(format!("f:{key}"));
        names.push(key.clone());
        collect(child, path, names, out);
        names.pop();
        path.pop();
    }
}

fn collect(value: &Value, path: &mut FieldPath, names: &mut Vec<String>, out: &mut FieldSet) {
    match (value, topology(names)) {
        (Value::Null, _) => {}
        (Value::Object(map), Topology::Granular) if !map.is_empty() => collect_object(map, path, names, out),
        (Value::Array(items), Topology::Keyed(key)) => {
            for item in items {
                let Some(id) = item.get(key) else { continue };
                path.push(format!("k:{}", json!({key: id})));
                out.insert(path.clone());
                if let Value::Object(map) = item {
                    collect_object(map, path, names, out);
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// `f:name` right under `k:{"name":...}`: the key of a keyed-list entry.
fn is_key_field(path: &[String]) -> bool {
    match path {
        [.., entry, field] => {
            parse_key(entry).is_some_and(|key| field.strip_prefix("f:").is_some_and(|f| key.contains_key(f)))
        }
        _ => false,
    }
}

fn is_entry(path: &[String]) -> bool {
    path.last().is_some_and(|element| element.starts_with("k:"))
}

fn key_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn parse_key(element: &str) -> Option<Map<String, Value>> {
    serde_json::from_str(element.strip_prefix("k:")?).ok()
}

/// The value at a field path, if present.
fn value_at<'a>(mut value: &'a Value, path: &[String]) -> Option<&'a Value> {
    for element in path {
        value = match element.strip_prefix("f:") {
            Some(field) => value.get(field)?,
            None => {
                let key = parse_key(element)?;
                value.as_array()?.iter().find(|item| key_matches(item, &key))?
            }
        };
    }
    (!value.is_null()).then_some(value)
}

fn value_at_mut<'a>(mut value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    for element in path {
        value = match element.strip_prefix("f:") {
            Some(field) => value.get_mut(field)?,
            None => {
                let key = parse_key(element)?;
                value.as_array_mut()?.iter_mut().find(|item| key_matches(item, &key))?
            }
        };
    }
    Some(value)
}

/// Removes the field, or keyed-list entry, at `path`.
fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let Some(parent) = value_at_mut(value, parent) else { return };
    match last.strip_prefix("f:") {
        Some(field) => {
            if let Some(map) = parent.as_object_mut() {
                map.remove(field);
            }
        }
        None => {
            if let (Some(key), Some(items)) = (parse_key(last), parent.as_array_mut()) {
                items.retain(|item| !key_matches(item, &key));
            }
        }
    }
}

/// `config` merged into `live`, favouring the config.
fn merge_object(live: &Map<String, Value>, config: &Map<String, Value>, names: &mut Vec<String>) -> Value {
    let mut out = live.clone();
    for (key, value) in config {
        if value.is_null() {
            continue;
        }
        names.push(key.clone());
        let merged = merge(live.get(key), value, names);
        names.pop();
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

fn merge(live: Option<&Value>, config: &Value, names: &mut Vec<String>) -> Value {
    match (live, config, topology(names)) {
        (Some(Value::Object(live)), Value::Object(config), Topology::Granular) => merge_object(live, config, names),
        (Some(Value::Array(live)), Value::Array(config), Topology::Keyed(key)) => merge_keyed(live, config, key, names),
        _ => config.clone(),
    }
}

/// Merges keyed lists entry by entry. Order, as structured-merge-diff keeps
/// it: entries only in the object stay where they are, the config's
/// entries come in the config's order.
fn merge_keyed(live: &[Value], config: &[Value], key: &str, names: &mut Vec<String>) -> Value {
    let position = |item: &Value| config.iter().position(|c| c.get(key).is_some() && c.get(key) == item.get(key));
    let mut out = Vec::new();
    let mut next = 0;
    let emit = |index: usize, out: &mut Vec<Value>, names: &mut Vec<String>| {
        let entry = &config[index];
        let existing = live.iter().find(|l| l.get(key) == entry.get(key)).and_then(Value::as_object);
        match (existing, entry.as_object()) {
            (Some(existing), Some(entry)) => out.push(merge_object(existing, entry, names)),
            _ => out.push(entry.clone()),
        }
    };
    for item in live {
        match position(item) {
            None => out.push(item.clone()),
            Some(index) if index < next => {}
            Some(index) => {
                while next <= index {
                    emit(next, &mut out, names);
                    next += 1;
                }
            }
        }
    }
    while next < config.len() {
        emit(next, &mut out, names);
        next += 1;
    }
    Value::Array(out)
}

/// managedFields as the API server shows them.
fn render_managed(managers: &[Managed]) -> Value {
    Value::Array(
        managers
            .iter()
            .map(|m| {
                json!({"manager": m.manager, "operation": m.operation.as_str(), "apiVersion": API_VERSION,
                       "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&m.fields)})
            })
            .collect(),
    )
}

/// A field set in FieldsV1 form: nested `{"f:x": {...}}`, with `".": {}`
/// where a node with children is itself owned.
fn fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for element in path {
            node = node.entry(element.clone()).or_insert_with(|| json!({})).as_object_mut().unwrap();
        }
        node.insert(".".into(), json!({}));
    }
    // A leaf is `{}`: drop the "." of nodes without children.
    fn tidy(node: &mut Map<String, Value>) {
        for child in node.values_mut() {
            if let Some(map) = child.as_object_mut() {
                tidy(map);
                if map.len() == 1 && map.contains_key(".") {
                    map.clear();
                }
            }
        }
    }
    tidy(&mut root);
    Value::Object(root)
}

fn parse_fields_v1(value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    let Some(map) = value.as_object() else { return };
    if map.is_empty() && !path.is_empty() {
        out.insert(path.clone());
    }
    for (key, child) in map {
        if key == "." {
            out.insert(path.clone());
        } else {
            path.push(key.clone());
            parse_fields_v1(child, path, out);
            path.pop();
        }
    }
}

fn parse_managed(list: &[Value]) -> Vec<Managed> {
    list.iter()
        .filter_map(|entry| {
            let operation = match entry["operation"].as_str()? {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return None,
            };
            let mut fields = FieldSet::new();
            parse_fields_v1(&entry["fieldsV1"], &mut Vec::new(), &mut fields);
            Some(Managed {
                manager: entry["manager"].as_str()?.to_string(),
                operation,
                time: entry["time"].as_str().unwrap_or_default().to_string(),
                fields,
            })
        })
        .collect()
}

/// The defaults of `SetDefaults_ValidatingWebhook`/`MutatingWebhook`, as
/// the API reference states them: failurePolicy Fail, matchPolicy
/// Equivalent, empty namespace and object selectors, timeoutSeconds 10,
/// service port 443, rule scope `*`, and reinvocationPolicy Never for
/// mutating webhooks
/// (<https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/validating-webhook-configuration-v1/>).
/// A field removed by an apply comes back as its default.
fn default_object(resource: Resource, object: &mut Value) {
    let Some(hooks) = object.get_mut("webhooks").and_then(Value::as_array_mut) else { return };
    for hook in hooks.iter_mut().filter_map(Value::as_object_mut) {
        let mut default = |field: &str, value: Value| {
            if hook.get(field).is_none_or(Value::is_null) {
                hook.insert(field.into(), value);
            }
        };
        default("failurePolicy", json!("Fail"));
        default("matchPolicy", json!("Equivalent"));
        default("namespaceSelector", json!({}));
        default("objectSelector", json!({}));
        default("timeoutSeconds", json!(10));
        if resource == Resource::Mutating {
            default("reinvocationPolicy", json!("Never"));
        }
        if let Some(service) =
            hook.get_mut("clientConfig").and_then(|c| c.get_mut("service")).and_then(Value::as_object_mut)
            && service.get("port").is_none_or(Value::is_null)
        {
            service.insert("port".into(), json!(443));
        }
        if let Some(rules) = hook.get_mut("rules").and_then(Value::as_array_mut) {
            for rule in rules.iter_mut().filter_map(Value::as_object_mut) {
                if rule.get("scope").is_none_or(Value::is_null) {
                    rule.insert("scope".into(), json!("*"));
                }
            }
        }
    }
}

/// The checks of `ValidateValidatingWebhookConfiguration` that an object
/// left half-owned by an apply, or written by hand, could fail (k8s.io/kubernetes
/// pkg/apis/admissionregistration/validation).
fn validate(object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut add = |reason: &'static str, field: String, message: String| causes.push(Cause { reason, field, message });
    let hooks = object["webhooks"].as_array().cloned().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, hook) in hooks.iter().enumerate() {
        let at = |field: &str| format!("webhooks[{i}].{field}");
        match hook["name"].as_str().unwrap_or_default() {
            "" => add("FieldValueRequired", at("name"), "Required value".into()),
            name => {
                if name.split('.').filter(|s| !s.is_empty()).count() < 3 {
                    add(
                        "FieldValueInvalid",
                        at("name"),
                        format!(
                            "Invalid value: {name:?}: should be a domain with at least three segments separated by dots"
                        ),
                    );
                }
                if !names.insert(name.to_string()) {
                    add("FieldValueDuplicate", at("name"), format!("Duplicate value: {name:?}"));
                }
            }
        }
        match hook["sideEffects"].as_str() {
            None => add(
                "FieldValueRequired",
                at("sideEffects"),
                "Required value: must specify one of None, NoneOnDryRun".into(),
            ),
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => add(
                "FieldValueNotSupported",
                at("sideEffects"),
                format!("Unsupported value: {other:?}: supported values: \"None\", \"NoneOnDryRun\""),
            ),
        }
        if hook["admissionReviewVersions"].as_array().is_none_or(Vec::is_empty) {
            add(
                "FieldValueRequired",
                at("admissionReviewVersions"),
                "Required value: must specify one of v1, v1beta1".into(),
            );
        }
        let config = &hook["clientConfig"];
        if config["url"].is_null() == config["service"].is_null() {
            add(
                "FieldValueRequired",
                at("clientConfig"),
                "Required value: exactly one of url or service is required".into(),
            );
        }
        if let Some(policy) = hook["failurePolicy"].as_str()
            && policy != "Fail"
            && policy != "Ignore"
        {
            add(
                "FieldValueNotSupported",
                at("failurePolicy"),
                format!("Unsupported value: {policy:?}: supported values: \"Fail\", \"Ignore\""),
            );
        }
        if let Some(timeout) = hook["timeoutSeconds"].as_i64()
            && !(1..=30).contains(&timeout)
        {
            add(
                "FieldValueInvalid",
                at("timeoutSeconds"),
                format!("Invalid value: {timeout}: the timeout value must be between 1 and 30 seconds"),
            );
        }
    }
    causes
}
