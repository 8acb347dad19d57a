//! The Kubernetes manifests in `statefulset/` agree with the code: parsed into k8s-openapi
//! types, then checked against the binary's own flags (clap) and defaults. (Schema
//! validation is `kubernetes-validate` in CI.)

use std::collections::BTreeMap;
use std::path::Path;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mp4tomp3::cli::Cli;

fn load<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let in_base = base().join(file);
    let path = match in_base.exists() {
        true => in_base,
        false => Path::new(env!("CARGO_MANIFEST_DIR")).join("statefulset").join(file),
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The base manifests' directory.
fn base() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("statefulset/base")
}

/// The generated ConfigMap's keys and values (`config.env`, as kustomize reads it).
fn config_env() -> BTreeMap<String, String> {
    std::fs::read_to_string(base().join("config.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn container(sts: &StatefulSet) -> Container {
    sts.spec.template.spec.as_ref().unwrap().containers[0].clone()
}

fn env_value(c: &Container, name: &str) -> String {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{name} is set in the StatefulSet"))
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container port {name}"))
        .container_port
}

/// Every environment variable `mp4tomp3 serve` (and the global flags) read.
fn known_env() -> Vec<String> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").unwrap().clone();
    cli.get_arguments()
        .chain(serve.get_arguments())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_code() {
    let sts: StatefulSet = load("statefulset.yaml");
    let spec = sts.spec.clone();
    let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the selector selects the pods"
    );

    // The kube selector the binary uses (set explicitly, and its default) selects the pods.
    let c = container(&sts);
    let kube_selector = env_value(&c, "MP4TOMP3_KUBE_SELECTOR");
    let default = Cli::command()
        .find_subcommand("serve")
        .unwrap()
        .get_arguments()
        .find(|a| a.get_id() == "kube_selector")
        .unwrap()
        .get_default_values()[0]
        .to_string_lossy()
        .into_owned();
    assert_eq!(kube_selector, default);
    let (k, v) = kube_selector.split_once('=').unwrap();
    assert_eq!(selector.get(k).map(String::as_str), Some(v));
    assert_eq!(env_value(&c, "MP4TOMP3_DISCOVERY"), "kube");

    // serviceName is the headless Service, which covers the pods and the cluster port.
    let headless: Service = load("service-cluster.yaml");
    assert_eq!(Some(spec.service_name.clone().unwrap()), headless.metadata.name);
    let hs = headless.spec.unwrap();
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    assert_eq!(hs.selector.as_ref(), Some(&selector));
    let cluster_port = port_of(&env_value(&c, "MP4TOMP3_CLUSTER_LISTEN"));
    assert_eq!(container_port(&c, "cluster"), cluster_port);
    assert_eq!(
        hs.ports.unwrap()[0].target_port,
        Some(IntOrString::String("cluster".into()))
    );
    let http: Service = load("service-http.yaml");
    let http = http.spec.unwrap();
    assert_eq!(http.selector.as_ref(), Some(&selector));
    assert_eq!(
        http.ports.unwrap()[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    let http_port = port_of(&env_value(&c, "MP4TOMP3_HTTP"));
    assert_eq!(container_port(&c, "http"), http_port);

    // Probes hit the routes that exist, on the HTTP port.
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("http".into()));
    }

    // Every variable the pod sets is one the binary reads (or the downward API's).
    let known = known_env();
    let downward = ["POD_NAME", "POD_NAMESPACE", "POD_IP"];
    for e in c.env.iter().flatten() {
        assert!(
            known.contains(&e.name) || downward.contains(&e.name.as_str()),
            "{} is not read by mp4tomp3",
            e.name
        );
    }
    // ...and the ConfigMap and Secret keys it refers to exist.
    let kustomization: serde_yaml_ng::Value = load("kustomization.yaml");
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(generated["envs"][0].as_str(), Some("config.env"));
    let cm_name = generated["name"].as_str().unwrap().to_string();
    let cm_keys: Vec<String> = config_env().into_keys().collect();
    let secret: Secret = load("secret.example.yaml");
    let secret_keys: Vec<String> = secret.string_data.unwrap().into_keys().collect();
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            assert_eq!(r.name, cm_name);
            assert!(cm_keys.contains(&r.key), "configmap key {}", r.key);
        }
        if let Some(r) = &from.secret_key_ref {
            assert_eq!(r.name, secret.metadata.name.clone().unwrap());
            assert!(secret_keys.contains(&r.key), "secret key {}", r.key);
        }
    }

    // Shutdown fits: the drain plus the preStop pause end before the kill.
    let grace = humantime::parse_duration(&env_value(&c, "MP4TOMP3_GRACE"))
        .unwrap()
        .as_secs() as i64;
    let pause = c.lifecycle.unwrap().pre_stop.unwrap().sleep.unwrap().seconds;
    let termination = spec.template.spec.unwrap().termination_grace_period_seconds.unwrap();
    assert!(grace + pause < termination, "{grace} + {pause} < {termination}");

    // RBAC: the pod's account may do what the binary calls, and nothing more.
    let role: Role = load("role.yaml");
    let rules: BTreeMap<String, Vec<String>> = role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| {
            let verbs = r.verbs.clone();
            r.resources
                .unwrap_or_default()
                .into_iter()
                .map(move |res| (res, verbs.clone()))
        })
        .collect();
    assert_eq!(rules["pods"], ["get", "list", "watch"]);
    assert_eq!(rules["statefulsets"], ["get"]);
    assert_eq!(rules.len(), 2);
    // The scale-down handoff reads the set named by the pod's name (`<set>-<ordinal>`):
    // the rule must name that set, and the API group must be apps.
    let fresh: Role = load("role.yaml");
    let sts_rule = fresh
        .rules
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.contains(&"statefulsets".to_string()))
        })
        .unwrap();
    assert_eq!(sts_rule.api_groups.as_deref(), Some(&["apps".to_string()][..]));
    let set_name = load::<StatefulSet>("statefulset.yaml").metadata.name.unwrap();
    assert_eq!(sts_rule.resource_names.as_deref(), Some(&[set_name.clone()][..]));
    assert_eq!(
        mp4tomp3::cluster::kube::ordinal(&format!("{set_name}-4")),
        Some((set_name.as_str(), 4)),
        "pod names of this set parse to it"
    );
    let binding: RoleBinding = load("rolebinding.yaml");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let sa = spec_service_account(&sts);
    assert_eq!(binding.subjects.unwrap()[0].name, sa);

    // The disruption budget and the network policy cover the same pods; only they reach
    // the cluster port.
    let pdb: PodDisruptionBudget = load("poddisruptionbudget.yaml");
    assert_eq!(
        pdb.spec.unwrap().selector.unwrap().match_labels.as_ref(),
        Some(&selector)
    );
    let np: NetworkPolicy = load("networkpolicy.yaml");
    let np = np.spec.unwrap();
    assert_eq!(np.pod_selector.unwrap().match_labels.as_ref(), Some(&selector));
    let cluster_rule = np
        .ingress
        .unwrap()
        .into_iter()
        .find(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::Int(cluster_port)))
        })
        .expect("a rule for the cluster port");
    let from = cluster_rule.from.unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0].pod_selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&selector)
    );

    // The kustomization applies every manifest but the secret example.
    let kustomization: serde_yaml_ng::Value = load("kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for entry in std::fs::read_dir(base()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "secret.example.yaml" {
            assert!(listed.contains(&name.as_str()), "{name} is in the kustomization");
        }
    }
    assert!(!listed.contains(&"secret.example.yaml"));
}

fn spec_service_account(sts: &StatefulSet) -> String {
    let pod = sts.spec.template.spec.as_ref().unwrap();
    pod.service_account_name.clone().unwrap()
}

#[test]
fn the_image_runs_as_the_pod_expects() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("statefulset/Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage");
    assert!(
        lines.iter().any(|l| l.contains("cargo build --release --locked")),
        "a release build of the locked dependencies"
    );
    let runtime = &lines[*stages.last().unwrap()..];
    assert!(
        runtime.iter().all(|l| !l.contains("cargo")),
        "no toolchain in the runtime stage"
    );
    let find = |directive: &str| {
        runtime
            .iter()
            .find_map(|l| l.strip_prefix(directive))
            .unwrap_or_else(|| panic!("{directive}in the runtime stage"))
            .trim()
            .to_string()
    };

    let sts: StatefulSet = load("statefulset.yaml");
    let pod = sts.spec.template.spec.clone().unwrap();
    let security = pod.security_context.clone().unwrap();
    let uid = security.run_as_user.unwrap();
    assert_ne!(uid, 0);
    assert_eq!(find("USER "), format!("{uid}:{}", security.run_as_group.unwrap_or(uid)));
    let c = container(&sts);
    let exposed: Vec<i32> = find("EXPOSE ").split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        exposed,
        vec![container_port(&c, "http"), container_port(&c, "cluster")],
        "the image exposes the pod's ports"
    );
    // The pod runs the image's entrypoint with `serve` (its args, or the image's CMD).
    assert!(find("ENTRYPOINT ").contains("/usr/local/bin/mp4tomp3"));
    let args = c.args.clone().unwrap_or_default();
    assert!(c.command.is_none(), "the image's entrypoint is used");
    assert!(args.first().map_or(find("CMD ").contains("serve"), |a| a == "serve"));

    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for path in ["target/", ".git/", "data/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore leaves out {path}"
        );
    }
}

/// The pod's mutual TLS, probes, metrics port and spread; the cert-manager and openssl ways
/// to make its certificate Secret; the monitoring component's scrape target and alert
/// series: each agrees with the base and with the binary.
#[test]
fn the_operations_files_agree_with_the_base_and_the_code() {
    let sts: StatefulSet = load("statefulset.yaml");
    let c = container(&sts);
    let pod = sts.spec.template.spec.clone().unwrap();
    // TLS between pods: the three files from one mounted Secret, named as both makers name it.
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "cluster-tls")
        .expect("the cluster certificate is mounted");
    assert_eq!(mount.read_only, Some(true));
    for (var, key) in [
        ("MP4TOMP3_CLUSTER_TLS_CERT", "tls.crt"),
        ("MP4TOMP3_CLUSTER_TLS_KEY", "tls.key"),
        ("MP4TOMP3_CLUSTER_TLS_CA", "ca.crt"),
    ] {
        assert_eq!(env_value(&c, var), format!("{}/{key}", mount.mount_path));
    }
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "cluster-tls").unwrap();
    let secret = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("statefulset");
    let certificate: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("components/cert-manager/certificate.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(certificate["spec"]["secretName"].as_str(), Some(secret.as_str()));
    let server_name = Cli::command()
        .find_subcommand("serve")
        .unwrap()
        .get_arguments()
        .find(|a| a.get_id() == "cluster_tls_server_name")
        .unwrap()
        .get_default_values()[0]
        .to_string_lossy()
        .into_owned();
    assert_eq!(certificate["spec"]["dnsNames"][0].as_str(), Some(server_name.as_str()));
    let usages: Vec<&str> = certificate["spec"]["usages"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(usages.contains(&"server auth") && usages.contains(&"client auth"));
    let script = std::fs::read_to_string(root.join("tls/make-certs.sh")).unwrap();
    assert!(
        script.contains(&format!("name: {secret}")),
        "the script writes the mounted Secret"
    );
    assert!(script.contains(&format!("SERVER_NAME:-{server_name}")));

    // A startup probe covers a long first start; liveness waits for it.
    let startup = c.startup_probe.as_ref().expect("a startupProbe");
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    let patience = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
    assert!(patience >= 300, "{patience} s for migrations");

    // Metrics on their own port, which the headless Service names for the ServiceMonitor.
    let metrics_port = port_of(&env_value(&c, "MP4TOMP3_METRICS_LISTEN"));
    assert_eq!(container_port(&c, "metrics"), metrics_port);
    let headless: Service = load("service-cluster.yaml");
    let port = headless
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("the headless Service has the metrics port");
    assert_eq!(port.target_port, Some(IntOrString::String("metrics".into())));
    let monitoring = root.join("components/monitoring");
    let monitor: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(monitoring.join("servicemonitor.yaml")).unwrap()).unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
    let np: NetworkPolicy =
        serde_yaml_ng::from_str(&std::fs::read_to_string(monitoring.join("networkpolicy.yaml")).unwrap()).unwrap();
    let ports = np.spec.unwrap().ingress.unwrap()[0].ports.clone().unwrap();
    assert_eq!(ports[0].port, Some(IntOrString::Int(metrics_port)));

    // Every series the alerts and the dashboard read is one the binary exports.
    // (A family is exported once it has a series: one of each.)
    mp4tomp3::metrics::http_request("/healthz", "GET", 200);
    mp4tomp3::metrics::email(true);
    mp4tomp3::metrics::webhook_call("delivered");
    let exported = mp4tomp3::metrics::render(&mp4tomp3::metrics::Snapshot {
        jobs: vec![("failed", 0)],
        ..Default::default()
    });
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for file in ["prometheusrule.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let mut seen = 0;
        for (at, _) in text.match_indices("mp4tomp3_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                families.contains(&family),
                "{file} reads {name}, which is not exported: {families:?}"
            );
            seen += 1;
        }
        assert!(seen >= 5, "{file} reads the metrics");
    }

    // Soft spread over nodes and zones.
    let spread = pod.topology_spread_constraints.unwrap();
    let keys: Vec<&str> = spread.iter().map(|t| t.topology_key.as_str()).collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
    assert!(spread.iter().all(|t| t.when_unsatisfiable == "ScheduleAnyway"));
}

/// `kubectl kustomize` (offline) renders the base and the production overlay: TLS mounted
/// and set, the ConfigMap generated under a content hash the pod template refers to (an
/// edit rolls the pods), the image pinned by digest, the optional components present.
#[test]
fn the_kustomizations_render_with_tls_a_hashed_config_and_a_pinned_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("statefulset");
    let render = |dir: &Path| -> Vec<serde_yaml_ng::Value> {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .expect("kubectl (kubectl kustomize renders offline)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    let kinds = |objects: &[serde_yaml_ng::Value]| -> Vec<String> {
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let base = render(&root);
    let production = render(&root.join("overlays/production"));
    for objects in [&base, &production] {
        let sts: StatefulSet =
            serde_yaml_ng::from_value(objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap().clone()).unwrap();
        let c = container(&sts);
        assert!(env_value(&c, "MP4TOMP3_CLUSTER_TLS_CERT").ends_with("tls.crt"));
        assert_eq!(env_value(&c, "MP4TOMP3_DISCOVERY"), "kube");
        let cm: ConfigMap = serde_yaml_ng::from_value(
            objects
                .iter()
                .find(|o| {
                    o["kind"] == "ConfigMap"
                        && o["metadata"]["name"].as_str().unwrap().starts_with("mp4tomp3-")
                        && o["metadata"]["name"] != "mp4tomp3-dashboard"
                })
                .unwrap()
                .clone(),
        )
        .unwrap();
        let hashed = cm.metadata.name.unwrap();
        assert_eq!(cm.data.unwrap(), config_env(), "the generated ConfigMap is config.env");
        let refs: Vec<String> = c
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                e.value_from
                    .as_ref()?
                    .config_map_key_ref
                    .as_ref()
                    .map(|r| r.name.clone())
            })
            .collect();
        assert!(
            !refs.is_empty() && refs.iter().all(|r| *r == hashed),
            "{refs:?} → {hashed}"
        );
    }
    let base_kinds = kinds(&base);
    assert!(
        !base_kinds.contains(&"Certificate".to_string()),
        "the base needs no CRD"
    );
    let prod_kinds = kinds(&production);
    for kind in ["Certificate", "Issuer", "ServiceMonitor", "PrometheusRule"] {
        assert!(
            prod_kinds.contains(&kind.to_string()),
            "{kind} in the production overlay"
        );
    }
    let sts = production.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
    let image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    let digest = image.split_once("@sha256:").expect("pinned by digest").1;
    assert_eq!(digest.len(), 64);
}
