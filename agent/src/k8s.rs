//! Kubernetes pod metadata: pod name, namespace, allow-listed labels and
//! container names for the pods of this node, from the API server.
//!
//! A task on the agent's runtime lists the node's pods
//! (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`), then watches
//! them from the list's `resourceVersion`; a `410 Gone` (HTTP status or
//! `ERROR` event) or a broken watch starts a new list, with backoff. What it
//! keeps is an index by pod UID and by container id, both of which the
//! cgroup path of a process gives (see `crate::container`); resources are
//! matched against it when they are built, so a pod's processes carry its
//! metadata from the interval after the pod is known. A deleted pod is
//! forgotten; a re-created one has a new UID and so its own entry.
//!
//! The client is a small hand-written list + watch over reqwest (rustls)
//! and serde_json, which the agent already builds for OTLP/HTTP, rather than
//! `kube` + `k8s-openapi` (see the commit that added it for the measured
//! compile-time cost): two GET requests and a few fields of a pod are all it
//! needs.
//!
//! Without API access (not in a cluster and no `--k8s-api-url`, or the
//! server refuses: 401/403, connection refused) the agent logs one warning
//! and keeps the identity the cgroup paths give; it keeps trying in the
//! background, quietly, and says so in one line when the API answers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::{config::KubernetesConfig, container::ContainerIdentity, otlp};

/// Where in-cluster credentials live (mounted by the kubelet).
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub const POD_NAME: &str = "k8s.pod.name";
pub const NAMESPACE: &str = "k8s.namespace.name";
pub const CONTAINER_NAME: &str = "k8s.container.name";
pub const LABEL_PREFIX: &str = "k8s.pod.label.";

/// What is kept of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Lowercase, with dashes, as `crate::container` writes it.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Allow-listed labels only, sorted by key.
    pub labels: Vec<(String, String)>,
    /// (container id without the runtime prefix, container name).
    pub containers: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Index {
    pods: HashMap<String, Arc<Pod>>,
    /// Container id -> pod UID.
    containers: HashMap<String, String>,
}

impl Index {
    fn upsert(&mut self, pod: Pod) {
        self.remove(&pod.uid);
        for (id, _) in &pod.containers {
            self.containers.insert(id.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (id, _) in &old.containers {
                if self.containers.get(id).is_some_and(|u| u == uid) {
                    self.containers.remove(id);
                }
            }
        }
    }
}

/// The node's pods, shared between the watcher and the exporter.
#[derive(Clone, Default)]
pub struct PodMetadata(Arc<RwLock<Index>>);

impl PodMetadata {
    /// The namespace of the pod of a process or cgroup with this cgroup
    /// identity, if its pod is known.
    pub fn namespace(&self, c: &ContainerIdentity) -> Option<String> {
        let idx = self.0.read().unwrap_or_else(|e| e.into_inner());
        let uid = match &c.pod_uid {
            Some(u) => u.as_str(),
            None => idx.containers.get(c.id.as_ref()?)?.as_str(),
        };
        idx.pods.get(uid).map(|p| p.namespace.clone())
    }

    /// Pod attributes for a process or cgroup with this cgroup identity:
    /// none unless its pod (by UID, else by container id) is known.
    pub fn attributes(&self, c: &ContainerIdentity) -> Vec<KeyValue> {
        let idx = self.0.read().unwrap_or_else(|e| e.into_inner());
        let uid = match &c.pod_uid {
            Some(u) => u.as_str(),
            None => match c.id.as_ref().and_then(|id| idx.containers.get(id)) {
                Some(u) => u.as_str(),
                None => return Vec::new(),
            },
        };
        let Some(pod) = idx.pods.get(uid) else {
            return Vec::new();
        };
        let mut attrs = Vec::with_capacity(4 + pod.labels.len());
        if c.pod_uid.is_none() {
            attrs.push(otlp::kv_str(crate::container::POD_UID, pod.uid.clone()));
        }
        attrs.push(otlp::kv_str(POD_NAME, pod.name.clone()));
        attrs.push(otlp::kv_str(NAMESPACE, pod.namespace.clone()));
        if let Some(id) = &c.id
            && let Some((_, name)) = pod.containers.iter().find(|(cid, _)| cid == id)
        {
            attrs.push(otlp::kv_str(CONTAINER_NAME, name.clone()));
        }
        for (k, v) in &pod.labels {
            attrs.push(otlp::kv_str(&format!("{LABEL_PREFIX}{k}"), v.clone()));
        }
        attrs
    }

    fn replace(&self, pods: Vec<Pod>) {
        let mut idx = Index::default();
        for p in pods {
            idx.upsert(p);
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = idx;
    }

    fn apply(&self, event: PodEvent) {
        let mut idx = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            PodEvent::Upsert(p) => idx.upsert(p),
            PodEvent::Delete(uid) => idx.remove(&uid),
        }
    }

    /// Pods known now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).pods.len()
    }
}

enum PodEvent {
    Upsert(Pod),
    Delete(String),
}

// The few fields read from the API's JSON.

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<PodJson>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct PodJson {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize, Default)]
struct PodStatus {
    #[serde(rename = "containerStatuses", default)]
    containers: Vec<ContainerStatus>,
    #[serde(rename = "initContainerStatuses", default)]
    init_containers: Vec<ContainerStatus>,
    #[serde(rename = "ephemeralContainerStatuses", default)]
    ephemeral_containers: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    #[serde(rename = "containerID", default)]
    container_id: Option<String>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// `containerd://<id>` -> `<id>` (also `cri-o://`, `docker://`, any
/// `<runtime>://`); None for an empty id (a container not started yet).
pub fn strip_runtime(id: &str) -> Option<String> {
    let id = id.split_once("://").map_or(id, |(_, rest)| rest).trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

impl PodJson {
    fn into_pod(self, allow: &[String]) -> Pod {
        let m = self.metadata;
        let labels = m
            .labels
            .into_iter()
            .filter(|(k, _)| allow.iter().any(|a| a == k))
            .collect();
        let s = self.status;
        let containers = s
            .containers
            .into_iter()
            .chain(s.init_containers)
            .chain(s.ephemeral_containers)
            .filter_map(|c| Some((strip_runtime(c.container_id.as_deref()?)?, c.name)))
            .collect();
        Pod {
            uid: m.uid.to_ascii_lowercase(),
            name: m.name,
            namespace: m.namespace,
            labels,
            containers,
        }
    }
}

/// Why a request did not give what was asked.
#[derive(Debug)]
enum ApiError {
    /// 401 or 403: the credentials (or the RBAC rules) do not allow it.
    Refused { status: u16, message: String },
    /// 410 Gone: the resourceVersion is too old; list again.
    Gone,
    /// Connection refused, reset, timed out, DNS...
    Transport(String),
    /// Any other status, or a body that does not parse.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Refused { status, message } => write!(
                f,
                "the API server refused the request ({status}{}{message})",
                if message.is_empty() { "" } else { ": " }
            ),
            ApiError::Gone => write!(f, "resource version expired (410 Gone)"),
            ApiError::Transport(e) | ApiError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// How the API server is reached.
struct Api {
    client: reqwest::Client,
    base: String,
    /// Read before every request: projected tokens are rotated.
    token_file: Option<String>,
    node: String,
    labels: Vec<String>,
}

impl Api {
    fn pods_url(&self) -> String {
        let selector = format!("spec.nodeName={}", self.node);
        format!(
            "{}/api/v1/pods?fieldSelector={}",
            self.base.trim_end_matches('/'),
            percent_encode(&selector)
        )
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.get(url).header("Accept", "application/json");
        if let Some(f) = &self.token_file
            && let Ok(t) = std::fs::read_to_string(f)
            && !t.trim().is_empty()
        {
            req = req.bearer_auth(t.trim());
        }
        req
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect());
        Err(match status {
            401 | 403 => ApiError::Refused { status, message },
            410 => ApiError::Gone,
            _ => ApiError::Other(format!("HTTP {status}: {message}")),
        })
    }

    /// The node's pods and the list's resourceVersion.
    async fn list(&self) -> Result<(Vec<Pod>, String), ApiError> {
        let req = self.get(&self.pods_url()).timeout(Duration::from_secs(60));
        let body = self
            .send(req)
            .await?
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let list: PodList = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Other(format!("pod list does not parse: {e}")))?;
        let pods = list
            .items
            .into_iter()
            .map(|p| p.into_pod(&self.labels))
            .collect();
        Ok((pods, list.metadata.resource_version))
    }

    /// Watches from `rv`, applying events to `store` and advancing `rv`,
    /// until the server ends the watch (Ok: watch again from `rv`) or it
    /// fails.
    async fn watch(&self, rv: &mut String, store: &PodMetadata) -> Result<(), ApiError> {
        const WATCH_SECONDS: u64 = 300;
        let url = format!(
            "{}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            self.pods_url(),
            percent_encode(rv)
        );
        let req = self
            .get(&url)
            .timeout(Duration::from_secs(WATCH_SECONDS + 30));
        let mut resp = self.send(req).await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| ApiError::Transport(format!("watch broke: {}", error_chain(&e))))?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                self.event(&line, rv, store)?;
            }
            // One event is one pod: far below this unless the stream is not
            // line-delimited JSON.
            if buf.len() > 16 << 20 {
                return Err(ApiError::Other("watch event over 16 MiB".into()));
            }
        }
    }

    fn event(&self, line: &[u8], rv: &mut String, store: &PodMetadata) -> Result<(), ApiError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let ev: WatchEvent = serde_json::from_slice(line)
            .map_err(|e| ApiError::Other(format!("watch event does not parse: {e}")))?;
        match ev.kind.as_str() {
            "ERROR" => {
                if ev.object["code"].as_u64() == Some(410) {
                    return Err(ApiError::Gone);
                }
                Err(ApiError::Other(format!(
                    "watch error: {}",
                    ev.object["message"].as_str().unwrap_or("(no message)")
                )))
            }
            "BOOKMARK" => {
                if let Some(v) = ev.object["metadata"]["resourceVersion"].as_str() {
                    *rv = v.to_string();
                }
                Ok(())
            }
            kind @ ("ADDED" | "MODIFIED" | "DELETED") => {
                let pod: PodJson = serde_json::from_value(ev.object)
                    .map_err(|e| ApiError::Other(format!("watched pod does not parse: {e}")))?;
                if !pod.metadata.resource_version.is_empty() {
                    rv.clone_from(&pod.metadata.resource_version);
                }
                let pod = pod.into_pod(&self.labels);
                debug!(kind, pod = %format!("{}/{}", pod.namespace, pod.name), uid = %pod.uid, "pod event");
                store.apply(if kind == "DELETED" {
                    PodEvent::Delete(pod.uid)
                } else {
                    PodEvent::Upsert(pod)
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The reqwest error with its sources ("connection refused" is a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `url` may be used: `https://`, or `http://` to a loopback host.
pub fn check_api_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a URL ({e}); expected https://HOST[:PORT]"))?;
    match u.scheme() {
        "https" => {}
        "http" => {
            let host = u.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(format!(
                    "{url:?}: plain http is allowed only to a loopback address (the service \
                     account token would cross the network in clear); use https://"
                ));
            }
        }
        s => return Err(format!("{url:?}: scheme {s} is not http or https")),
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// Starts the watcher on the current tokio runtime when there is an API to
/// ask, and returns the (shared) pod index it fills. Without one, says so in
/// one line: a warning when this looks like a Kubernetes node (the node name
/// is known), else an info line.
pub fn start(cfg: &KubernetesConfig) -> PodMetadata {
    let store = PodMetadata::default();
    if !cfg.enabled {
        info!("Kubernetes pod metadata off (kubernetes.enabled: false or --no-k8s)");
        return store;
    }
    let in_cluster = in_cluster_url();
    let (base, how) = match (&cfg.api_url, &in_cluster) {
        (Some(u), _) => (u.clone(), "--k8s-api-url / kubernetes.api_url"),
        (None, Some(u)) => (u.clone(), "in-cluster (KUBERNETES_SERVICE_HOST/PORT)"),
        (None, None) => {
            let msg = "Kubernetes pod metadata off: no API server to ask \
                       (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset and no \
                       --k8s-api-url / kubernetes.api_url is given); processes in pods keep the \
                       identity their cgroup paths give (container.id, k8s.pod.uid)";
            if cfg.node_name.is_some() {
                warn!("{msg}");
            } else {
                info!("{msg}");
            }
            return store;
        }
    };
    let Some(node) = cfg.node_name.clone() else {
        warn!(
            api = %base,
            "Kubernetes pod metadata off: the node name is unknown, and only this node's pods \
             are watched (set K8S_NODE_NAME from the Downward API's spec.nodeName, or \
             --k8s-node-name / kubernetes.node_name); processes in pods keep the identity \
             their cgroup paths give"
        );
        return store;
    };
    let token_file = format!("{SA_DIR}/token");
    let ca_file = format!("{SA_DIR}/ca.crt");
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if base.starts_with("https://") {
        let ca = std::fs::read(&ca_file).ok();
        let tls = crate::export::otlp_config::TlsFiles { ca, client: None };
        match crate::export::otlp_tls::client_config(&tls) {
            Ok(mut c) => {
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                builder = builder.tls_backend_preconfigured(c);
            }
            Err(e) => {
                warn!(
                    "Kubernetes pod metadata off: the CA certificate {ca_file} does not load \
                     ({e}); processes in pods keep the identity their cgroup paths give"
                );
                return store;
            }
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            warn!("Kubernetes pod metadata off: HTTP client: {e}");
            return store;
        }
    };
    let api = Api {
        client,
        base,
        token_file: std::path::Path::new(&token_file)
            .exists()
            .then_some(token_file),
        node,
        labels: cfg.labels.clone(),
    };
    info!(
        api = %api.base,
        how,
        node = %api.node,
        labels = %cfg.labels.join(","),
        "watching this node's pods for Kubernetes metadata"
    );
    tokio::spawn(run(api, store.clone()));
    store
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` when both are set.
fn in_cluster_url() -> Option<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").ok()?;
    let (host, port) = (host.trim(), port.trim());
    if host.is_empty() || port.is_empty() {
        return None;
    }
    Some(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

/// Backoff between failed attempts: 1 s doubling to 60 s, with jitter
/// (half to all of it).
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = Duration::from_secs(1u64 << self.0.min(6)).min(Duration::from_secs(60));
        self.0 = self.0.saturating_add(1);
        let r = getrandom::u32().unwrap_or(u32::MAX / 2);
        base / 2 + base.mul_f64(f64::from(r) / f64::from(u32::MAX) / 2.0)
    }
}

/// List, watch, and again, for as long as the agent runs.
async fn run(api: Api, store: PodMetadata) {
    let mut backoff = Backoff(0);
    // One warning until the API answers; then one line when it does.
    let mut warned = false;
    loop {
        let (pods, mut rv) = match api.list().await {
            Ok(x) => x,
            Err(e) => {
                if !warned {
                    warned = true;
                    warn!(
                        api = %api.base,
                        "Kubernetes pod metadata unavailable: listing this node's pods failed: \
                         {e}{}; processes in pods keep the identity their cgroup paths give \
                         (container.id, k8s.pod.uid); retrying in the background",
                        hint(&e, api.token_file.is_some())
                    );
                } else {
                    debug!(api = %api.base, "listing pods failed again: {e}");
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let n = pods.len();
        store.replace(pods);
        if warned {
            info!(pods = n, node = %api.node, "Kubernetes API answers again: pod metadata on");
            warned = false;
        } else {
            info!(pods = n, node = %api.node, "listed this node's pods");
        }
        // Watch until it fails; a server-closed watch is resumed.
        let err = loop {
            match api.watch(&mut rv, &store).await {
                Ok(()) => {
                    backoff = Backoff(0);
                    continue;
                }
                Err(e) => break e,
            }
        };
        match err {
            ApiError::Gone => {
                debug!("watch: resource version expired; listing again");
                backoff = Backoff(0);
            }
            e => {
                debug!("watch ended: {e}; listing again after a pause");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// What to check, for the warning.
fn hint(e: &ApiError, has_token: bool) -> String {
    match e {
        ApiError::Refused { .. } if !has_token => {
            format!(" (no service account token at {SA_DIR}/token)")
        }
        ApiError::Refused { .. } => " (the ClusterRole must allow get, list and watch on pods: \
                                     deploy/kubernetes/clusterrole.yaml)"
            .to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d";

    fn pod_json(uid: &str, name: &str, cid: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": uid,
                         "resourceVersion": "7",
                         "labels": {"app": "web", "pod-template-hash": "abc"}},
            "status": {"containerStatuses": [
                {"name": "nginx", "containerID": cid},
                {"name": "waiting"}
            ]}
        })
    }

    fn strs(attrs: Vec<KeyValue>) -> Vec<(String, String)> {
        attrs
            .into_iter()
            .map(|kv| {
                let v = serde_json::to_value(&kv.value).unwrap();
                (kv.key, v["stringValue"].as_str().unwrap().to_string())
            })
            .collect()
    }

    #[test]
    fn runtime_prefixes_are_stripped() {
        for p in ["containerd://", "cri-o://", "docker://", ""] {
            assert_eq!(strip_runtime(&format!("{p}{ID}")).as_deref(), Some(ID));
        }
        assert_eq!(strip_runtime("containerd://"), None);
        assert_eq!(strip_runtime(""), None);
    }

    #[test]
    fn pods_match_by_uid_and_container_id() {
        let store = PodMetadata::default();
        let pod: PodJson =
            serde_json::from_value(pod_json(UID, "web-0", &format!("cri-o://{ID}"))).unwrap();
        store.replace(vec![pod.into_pod(&["app".to_string()])]);
        let full = ContainerIdentity {
            id: Some(ID.into()),
            runtime: Some("cri-o"),
            pod_uid: Some(UID.into()),
            qos_class: Some("burstable"),
        };
        let want = |extra: &[(&str, &str)]| {
            extra
                .iter()
                .chain(&[
                    ("k8s.pod.name", "web-0"),
                    ("k8s.namespace.name", "shop"),
                    ("k8s.container.name", "nginx"),
                    ("k8s.pod.label.app", "web"),
                ])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strs(store.attributes(&full)), want(&[]));
        // By container id alone: the pod UID comes from the API.
        let by_id = ContainerIdentity {
            pod_uid: None,
            ..full.clone()
        };
        assert_eq!(
            strs(store.attributes(&by_id)),
            want(&[("k8s.pod.uid", UID)])
        );
        // The pod's cgroup without a container: no container name.
        let pod_only = ContainerIdentity {
            id: None,
            ..full.clone()
        };
        let got = strs(store.attributes(&pod_only));
        assert!(
            !got.iter().any(|(k, _)| k == "k8s.container.name"),
            "{got:?}"
        );
        // Deleted: forgotten.
        store.apply(PodEvent::Delete(UID.into()));
        assert!(store.attributes(&full).is_empty());
        assert!(store.attributes(&by_id).is_empty());
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn api_urls() {
        for ok in [
            "https://10.0.0.1:443",
            "https://kubernetes.default.svc",
            "http://127.0.0.1:8001",
            "http://localhost:8001/",
            "http://[::1]:8001",
        ] {
            check_api_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://10.0.0.1:8080",
            "ftp://127.0.0.1",
            "127.0.0.1:8001",
            "",
        ] {
            assert!(check_api_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn selector_is_encoded() {
        assert_eq!(
            percent_encode("spec.nodeName=node-1"),
            "spec.nodeName%3Dnode-1"
        );
    }
}
