//! Kube discovery with the real `kube` client against a local stub API server that serves
//! real Pod JSON for list and watch (added, modified to running, deleted), and API faults
//! (500s, a dropped watch, 410 Gone).

use std::time::Duration;

use crate::common::kube_stub::{Fault, Stub, pod};
use crate::common::service::{Node, free_port, poll};
use serde_json::json;

/// The nodes a node's `/v1/cluster` lists as up.
async fn members(node: &Node) -> Vec<String> {
    let all = crate::common::service::cluster_members(node).await;
    all.into_iter()
        .filter(|(_, state)| state == "up")
        .map(|(node, _)| node)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_discovery_follows_pods_added_made_running_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    let port = free_port();
    stub.event("ADDED", pod("node-a", "Running", Some("127.0.0.2")));
    stub.event("ADDED", pod("node-b", "Pending", None));
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let start = |name: &'static str, ip: &'static str| {
        let listen = format!("{ip}:{port}");
        let data = dir.path().join(name);
        async move {
            let args = [
                "--node-name",
                name,
                "--cluster-listen",
                &listen,
                "--discovery",
                "kube",
                "--kube-selector",
                "app=mp4tomp3",
                // `members` logs in at every look: no login throttling here.
                "--login-per-minute",
                "100000",
                "--lockout-after",
                "100000",
            ];
            Node::start_with_env(&data, &args, &env).await
        }
    };
    let a = start("node-a", "127.0.0.2").await;
    let b = start("node-b", "127.0.0.3").await;
    // b is not running yet as far as the API says: nobody dials it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(&a).await, Vec::<String>::new());
    // Modified to running with an IP: a (the smaller address) connects.
    stub.event("MODIFIED", pod("node-b", "Running", Some("127.0.0.3")));
    poll(Duration::from_secs(15), "a and b to meet", || async {
        (members(&a).await == ["node-b"]).then_some(())
    })
    .await;
    poll(Duration::from_secs(15), "b to see a", || async {
        (members(&b).await == ["node-a"]).then_some(())
    })
    .await;
    // API faults keep the last view: 500s (and the open watch dropped), then a 410 on the
    // next watch (the client lists again). Nobody is dropped meanwhile.
    *stub.fault.lock().unwrap() = Fault::ServerError;
    let _ = stub.live.send(json!({"close": true}));
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(members(&a).await, ["node-b"], "the 500s dropped nobody");
    }
    assert!(
        a.log_text().contains("kube watch failed; keeping the last view"),
        "the node met the 500s"
    );
    *stub.fault.lock().unwrap() = Fault::Expired;
    poll(
        Duration::from_secs(30),
        "the watch to come back and meet the 410",
        || async { (*stub.fault.lock().unwrap() == Fault::None).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(&a).await, ["node-b"], "the 410 dropped nobody");
    assert!(!a.log_text().contains("pod left"), "no session was closed");
    let failures = |node: &Node| node.log_text().matches("kube watch failed").count();
    let before = failures(&a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failures(&a), before, "the watch is healthy again");

    // Deleted (after the faults: the watch works again): a drops it, although b's process
    // still runs.
    stub.event("DELETED", pod("node-b", "Running", Some("127.0.0.3")));
    poll(Duration::from_secs(10), "a to drop the deleted pod", || async {
        members(&a).await.is_empty().then_some(())
    })
    .await;
    assert!(a.log_text().contains("discovering peers through the kube API"));
}
