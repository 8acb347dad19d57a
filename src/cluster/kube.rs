//! `--discovery kube`: the peers are the ready pods of our StatefulSet, found by label
//! selector in our namespace through the kube API (list + watch, with kube-rs' backoff).
//!
//! A pod is a peer while it is Running, has a pod IP and no `deletionTimestamp` (readiness
//! is not required: readiness must not depend on peers). A terminating pod is not dialled
//! any more, but its session stays until it exits: it may be handing its jobs over. On API
//! errors the last view is kept: a failed or interrupted watch is never read as "every pod
//! left".
//!
//! Scale-down: a stopping pod reads its StatefulSet's desired replicas ([`desired_replicas`]);
//! a pod whose ordinal is no longer wanted hands its jobs over (`actors/request/handoff.rs`).

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// A pod of the set as the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPeer {
    /// The pod's name.
    pub name: String,
    /// Its cluster address.
    pub address: String,
    /// Terminating: keep its session, do not dial it.
    pub leaving: bool,
}

/// The cluster address of `pod`, if it runs with an IP.
pub fn peer_address(pod: &Pod, port: u16) -> Option<PodPeer> {
    let name = pod.metadata.name.clone()?;
    let leaving = pod.metadata.deletion_timestamp.is_some();
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let address = std::net::SocketAddr::new(ip, port).to_string();
    Some(PodPeer { name, address, leaving })
}

/// `mp4tomp3-2` → (`mp4tomp3`, 2): a StatefulSet pod's set and ordinal.
pub fn ordinal(pod: &str) -> Option<(&str, u32)> {
    let (set, n) = pod.rsplit_once('-')?;
    let n = n.parse().ok().filter(|_| !set.is_empty() && !n.starts_with('+'))?;
    Some((set, n))
}

/// The desired replicas of StatefulSet `name` (what `kubectl scale` sets).
pub async fn desired_replicas(namespace: Option<String>, name: &str) -> Result<u32, kube::Error> {
    let client = kube::Client::try_default().await?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    read_replicas(&Api::namespaced(client, &namespace), name).await
}

/// The desired replicas of StatefulSet `name`, read through `api`.
async fn read_replicas(api: &Api<StatefulSet>, name: &str) -> Result<u32, kube::Error> {
    let set = api.get(name).await?;
    let replicas = set.spec.replicas.unwrap_or(1);
    Ok(u32::try_from(replicas).unwrap_or(0))
}

/// What discovery sees: the pods' cluster addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// Running pods that stay.
    pub addresses: Vec<String>,
    /// Pods being deleted (they hand their jobs over and leave).
    pub leaving: Vec<String>,
}

/// What discovery tells the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The pods, after the first complete listing and at every change.
    Peers(Peers),
    /// Listing or watching failed: what failed and what to fix (the last view is kept).
    Failed(String),
    /// Our StatefulSet's declared replicas (read every [`REPLICAS_EVERY`]).
    Replicas(u32),
}

/// How often discovery reads the StatefulSet's declared replicas.
const REPLICAS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A discovery failure as an operator reads it: what failed and what to fix, from the API
/// status code when there is one.
pub fn explain(code: Option<u16>, namespace: &str, selector: &str, error: &str) -> String {
    match code {
        Some(401) => {
            format!("the kube API refused this pod's credentials (401): check its service account token ({error})")
        }
        Some(403) => format!(
            "the service account may not list and watch pods in namespace {namespace} (403): \
             apply statefulset/base/role.yaml and rolebinding.yaml ({error})"
        ),
        Some(code) => format!("the kube API answered {code} to the pod listing ({selector} in {namespace}): {error}"),
        None => format!(
            "cannot reach the kube API: check that this pod may connect to the API server \
             (an egress NetworkPolicy) ({error})"
        ),
    }
}

/// The API status code a watcher error carries, if any.
fn status_code(e: &watcher::Error) -> Option<u16> {
    let client = |e: &kube::Error| match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    };
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            client(e)
        }
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => Some(500),
    }
}

/// Watches the pods matching `selector` and reports the peer list on every change (the
/// mesh consumes it), and every failure; and, for a pod of StatefulSet `set`, the set's
/// declared replicas. Runs until the task is aborted.
pub async fn discover(
    namespace: Option<String>,
    selector: String,
    set: Option<String>,
    port: u16,
    report: impl Fn(Report),
) {
    let client = loop {
        match kube::Client::try_default().await {
            Ok(client) => break client,
            Err(e) => {
                let why = format!("no kube API configuration (in-cluster or KUBECONFIG): {e}");
                tracing::error!("{why}; retrying in 5 s");
                report(Report::Failed(why));
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    };
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(%namespace, %selector, "discovering peers through the kube API");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let mut replicas = tokio::time::interval(REPLICAS_EVERY);
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut pods: BTreeMap<String, PodPeer> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, PodPeer>> = None;
    let publish = |pods: &BTreeMap<String, PodPeer>| {
        let (leaving, wanted): (Vec<&PodPeer>, Vec<&PodPeer>) = pods.values().partition(|p| p.leaving);
        report(Report::Peers(Peers {
            addresses: wanted.into_iter().map(|p| p.address.clone()).collect(),
            leaving: leaving.into_iter().map(|p| p.address.clone()).collect(),
        }));
    };
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            _ = replicas.tick(), if set.is_some() => {
                let name = set.as_deref().unwrap_or_default();
                match read_replicas(&sets, name).await {
                    Ok(n) => report(Report::Replicas(n)),
                    Err(e) => tracing::debug!(error = %e, "cannot read the StatefulSet's replicas"),
                }
                continue;
            }
        };
        match event {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(list), Some(peer)) = (listing.as_mut(), peer_address(&pod, port)) {
                    list.insert(peer.name.clone(), peer);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(list) = listing.take() {
                    pods = list;
                    publish(&pods);
                }
            }
            Ok(Event::Apply(pod)) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match peer_address(&pod, port) {
                    Some(peer) => pods.insert(name, peer),
                    None => pods.remove(&name),
                };
                publish(&pods);
            }
            Ok(Event::Delete(pod)) => {
                pods.remove(&pod.metadata.name.clone().unwrap_or_default());
                publish(&pods);
            }
            // A watch whose resource version is too old: the watcher lists again.
            Err(e) if status_code(&e) == Some(410) => {
                tracing::info!(error = %e, "kube watch expired; listing the pods again");
            }
            // Keep the last view; the backoff retries.
            Err(e) => {
                let why = explain(status_code(&e), &namespace, &selector, &e.to_string());
                tracing::warn!(error = %e, "kube watch failed; keeping the last view of the peers: {why}");
                report(Report::Failed(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>, deleting: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mp4tomp3-1", "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn running_pods_with_an_ip_are_peers_and_terminating_ones_are_leaving() {
        assert_eq!(
            peer_address(&pod("Running", Some("10.1.2.3"), false), 4697),
            Some(PodPeer {
                name: "mp4tomp3-1".into(),
                address: "10.1.2.3:4697".into(),
                leaving: false
            })
        );
        assert_eq!(
            peer_address(&pod("Running", Some("fd00::5"), false), 4697)
                .unwrap()
                .address,
            "[fd00::5]:4697"
        );
        assert_eq!(peer_address(&pod("Pending", Some("10.1.2.3"), false), 4697), None);
        assert_eq!(peer_address(&pod("Running", None, false), 4697), None);
        assert!(
            peer_address(&pod("Running", Some("10.1.2.3"), true), 4697)
                .unwrap()
                .leaving
        );
    }

    #[test]
    fn failures_say_what_to_fix() {
        let says = |code, needle: &str| {
            let text = explain(code, "media", "app=mp4tomp3", "boom");
            assert!(text.contains(needle) && text.contains("boom"), "{text}");
        };
        says(Some(403), "statefulset/base/role.yaml");
        says(Some(403), "namespace media");
        says(Some(401), "service account token");
        says(None, "NetworkPolicy");
        says(Some(500), "answered 500");
    }

    #[test]
    fn ordinals_come_from_statefulset_pod_names() {
        assert_eq!(ordinal("mp4tomp3-2"), Some(("mp4tomp3", 2)));
        assert_eq!(ordinal("my-set-10"), Some(("my-set", 10)));
        for bad in ["mp4tomp3", "node-a", "-3", "x-+3", "x-"] {
            assert_eq!(ordinal(bad), None, "{bad}");
        }
    }
}
