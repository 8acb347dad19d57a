//! Kube discovery with the real `kube` client against a local stub API server that behaves
//! as the real one (HTTPS with a CA and a token, label selectors, watches that time out and
//! resume, 410 after a compaction, 403 for a missing Role rule): real Pod JSON for list and
//! watch (added, modified to running, deleted), API faults (500s, a dropped watch). The
//! mesh runs with mutual TLS, as the manifests set it.

use std::time::Duration;

use crate::common::kube_stub::{Fault, Stub, labelled, pod};
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
    // Watches end after 2 s (the real server ends them too) and resume from their version.
    *stub.watch_limit.lock().unwrap() = Duration::from_secs(2);
    let port = free_port();
    stub.event("ADDED", pod("node-a", "Running", Some("127.0.0.2")));
    // Another app's pod in the namespace, running with an address: never a peer.
    stub.event("ADDED", labelled("other-0", "Running", Some("127.0.0.9"), "other"));
    stub.event("ADDED", pod("node-b", "Pending", None));
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let tls = crate::common::pki::tls_args(&dir.path().join("pki"));
    let start = |name: &'static str, ip: &'static str| {
        let listen = format!("{ip}:{port}");
        let data = dir.path().join(name);
        let tls = tls.clone();
        async move {
            let mut args = vec![
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
            args.extend(tls.iter().map(String::as_str));
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
    let selectors = stub.selectors.lock().unwrap().clone();
    assert!(
        !selectors.is_empty() && selectors.iter().all(|s| s == "app=mp4tomp3"),
        "every request selects our pods: {selectors:?}"
    );
    let ready: serde_json::Value = reqwest::get(a.url("/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["discovery"]["listed"], true, "{ready}");
    assert_eq!(
        ready["discovery"]["pods"], 2,
        "the other app's pod is not counted: {ready}"
    );
    // Watches ended and resumed meanwhile, and nobody was dropped.
    let watches = stub.watches.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        stub.watches.load(std::sync::atomic::Ordering::SeqCst) >= watches + 2,
        "watches time out and resume"
    );
    assert_eq!(members(&a).await, ["node-b"], "resumed watches dropped nobody");
    // API faults keep the last view: 500s (and the open watch dropped), then a compaction
    // (the next watch from an old version gets 410 and the client lists again). Nobody is
    // dropped meanwhile.
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
    *stub.fault.lock().unwrap() = Fault::None;
    // The other app's pods change (versions move on, our watches see nothing of it), then
    // the history is compacted: our nodes' versions are too old.
    stub.event("MODIFIED", labelled("other-0", "Running", Some("127.0.0.10"), "other"));
    stub.compact();
    let gone = |stub: &Stub| stub.gone.load(std::sync::atomic::Ordering::SeqCst);
    poll(
        Duration::from_secs(30),
        "the watch to come back and meet the 410",
        || async { (gone(&stub) >= 2).then_some(()) },
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

/// A pod whose service account may not list pods (a Role without the rule): not ready, and
/// `/readyz` and `/v1/cluster` say what to fix; once the rule is there, it lists the pods
/// and is ready. `/metrics` exports the StatefulSet's declared replicas.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_the_api_refuses_stays_unready_and_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    stub.forbidden.lock().unwrap().insert("pods");
    stub.event("ADDED", pod("mp4tomp3-0", "Running", Some("127.0.0.2")));
    let port = free_port();
    let listen = format!("127.0.0.2:{port}");
    let mut args: Vec<String> = [
        "--node-name",
        "mp4tomp3-0",
        "--cluster-listen",
        &listen,
        "--discovery",
        "kube",
        "--kube-selector",
        "app=mp4tomp3",
    ]
    .map(String::from)
    .to_vec();
    args.extend(crate::common::pki::tls_args(&dir.path().join("pki")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let a = Node::start_unready(&dir.path().join("a"), &args, &env).await;
    let readyz = || async {
        let r = reqwest::get(a.url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    let refused = poll(Duration::from_secs(20), "the 403 to show in /readyz", || async {
        let (code, body) = readyz().await;
        body["discovery"]["error"].is_string().then_some((code, body))
    })
    .await;
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(refused.1["discovery"]["listed"], false);
    let error = refused.1["discovery"]["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("statefulset/base/role.yaml"),
        "{error}"
    );
    // It stays so (no timeout makes a pod that cannot see its peers ready).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(readyz().await.0, 503);
    let api = crate::common::api::Api::new(&a);
    let token = api
        .login(crate::common::service::ADMIN.0, crate::common::service::ADMIN.1)
        .await;
    let view = api.get_json(&token, "/v1/cluster").await;
    assert_eq!(view["transport"], "mutual-tls", "{view}");
    assert!(view["discovery"]["error"].as_str().unwrap().contains("403"), "{view}");
    assert!(
        a.log_text().contains("statefulset/base/role.yaml"),
        "the log says what to fix"
    );
    // The Role is fixed: the pod lists its set and is ready.
    stub.forbidden.lock().unwrap().clear();
    let (_, ready) = poll(Duration::from_secs(30), "the pod to be ready", || async {
        let (code, body) = readyz().await;
        (code == 200).then_some((code, body))
    })
    .await;
    assert_eq!(ready["discovery"]["listed"], true, "{ready}");
    assert!(ready["discovery"]["error"].is_null(), "{ready}");
    let metrics = poll(Duration::from_secs(40), "the declared replicas", || async {
        let text = reqwest::get(a.url("/metrics")).await.unwrap().text().await.unwrap();
        text.contains("mp4tomp3_cluster_replicas 3").then_some(text)
    })
    .await;
    assert!(metrics.contains("mp4tomp3_cluster_members 0"), "{metrics}");
}

/// `--cluster-insecure`: kube discovery runs a clear-text mesh only when told to, and then
/// every status says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_clear_text_mesh_is_said_in_every_status() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    stub.event("ADDED", pod("node-a", "Running", Some("127.0.0.2")));
    let listen = format!("127.0.0.2:{}", free_port());
    let args = [
        "--cluster-listen",
        &listen,
        "--discovery",
        "kube",
        "--kube-selector",
        "app=mp4tomp3",
        "--cluster-insecure",
    ];
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let a = Node::start_with_env(&dir.path().join("a"), &args, &env).await;
    let ready: serde_json::Value = reqwest::get(a.url("/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let warnings = ready["warnings"].to_string();
    assert!(warnings.contains("clear text"), "{ready}");
    let api = crate::common::api::Api::new(&a);
    let token = api
        .login(crate::common::service::ADMIN.0, crate::common::service::ADMIN.1)
        .await;
    let view = api.get_json(&token, "/v1/cluster").await;
    assert_eq!(view["transport"], "clear-text", "{view}");
    assert!(view["warnings"].to_string().contains("clear text"), "{view}");
}
