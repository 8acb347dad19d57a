//! `--discovery kube`: the peers are the ready pods of our StatefulSet, found by label
//! selector in our namespace through the kube API (list + watch, with kube-rs' backoff).
//!
//! A pod is a peer while it is Running, has a pod IP and no `deletionTimestamp` (readiness
//! is not required: readiness must not depend on peers). On API errors the last view is
//! kept: a failed or interrupted watch is never read as "every pod left".

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use ractor::ActorRef;

use crate::actors::cluster::ClusterMsg;

/// The cluster address of `pod`, if it should be a peer.
pub fn peer_address(pod: &Pod, port: u16) -> Option<(String, String)> {
    let name = pod.metadata.name.clone()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some((name, std::net::SocketAddr::new(ip, port).to_string()))
}

/// Watches the pods matching `selector` and sends the peer list to the cluster actor on
/// every change. Runs until the task is aborted.
pub async fn discover(namespace: Option<String>, selector: String, port: u16, cluster: ActorRef<ClusterMsg>) {
    let client = loop {
        match kube::Client::try_default().await {
            Ok(client) => break client,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the kube API; retrying in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    };
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(%namespace, %selector, "discovering peers through the kube API");
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut pods: BTreeMap<String, String> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, String>> = None;
    let publish = |pods: &BTreeMap<String, String>| {
        let _ = cluster.send_message(ClusterMsg::Peers {
            addresses: pods.values().cloned().collect(),
        });
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(list), Some((name, addr))) = (listing.as_mut(), peer_address(&pod, port)) {
                    list.insert(name, addr);
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
                    Some((name, addr)) => pods.insert(name, addr),
                    None => pods.remove(&name),
                };
                publish(&pods);
            }
            Ok(Event::Delete(pod)) => {
                pods.remove(&pod.metadata.name.clone().unwrap_or_default());
                publish(&pods);
            }
            // Keep the last view; the backoff retries.
            Err(e) => tracing::warn!(error = %e, "kube watch failed; keeping the last view of the peers"),
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
    fn only_running_pods_with_an_ip_that_are_not_terminating_are_peers() {
        assert_eq!(
            peer_address(&pod("Running", Some("10.1.2.3"), false), 4697),
            Some(("mp4tomp3-1".into(), "10.1.2.3:4697".into()))
        );
        assert_eq!(
            peer_address(&pod("Running", Some("fd00::5"), false), 4697).unwrap().1,
            "[fd00::5]:4697"
        );
        assert_eq!(peer_address(&pod("Pending", Some("10.1.2.3"), false), 4697), None);
        assert_eq!(peer_address(&pod("Running", None, false), 4697), None);
        assert_eq!(peer_address(&pod("Running", Some("10.1.2.3"), true), 4697), None);
    }
}
