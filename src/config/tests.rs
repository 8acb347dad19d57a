use super::*;

fn peers(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_cluster_needs_a_listen_address_and_a_cookie() {
    let listen: SocketAddr = "127.0.0.2:4697".parse().unwrap();
    assert!(
        cluster_config(None, None, None, Vec::new()).unwrap().is_none(),
        "no peers: one node"
    );
    assert!(matches!(
        cluster_config(None, None, Some("c".into()), peers(&["127.0.0.3:4697"])),
        Err(ConfigError::Invalid {
            flag: "cluster-listen",
            ..
        })
    ));
    assert!(matches!(
        cluster_config(Some(listen), None, None, peers(&["127.0.0.3:4697"])),
        Err(ConfigError::Invalid {
            flag: "cluster-cookie",
            ..
        })
    ));
    assert!(matches!(
        cluster_config(Some(listen), None, Some("c".into()), peers(&["no-port"])),
        Err(ConfigError::Invalid { flag: "peers", .. })
    ));
    let ok = cluster_config(
        Some(listen),
        None,
        Some("c".into()),
        peers(&["127.0.0.2:4697", "127.0.0.3:4697"]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(ok.advertise, "127.0.0.2:4697");
    assert_eq!(ok.peers, peers(&["127.0.0.3:4697"]), "ourselves removed from the peers");
}

#[derive(clap::Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

fn config(dir: &Path, extra: &[&str]) -> Config {
    let mut argv = vec!["serve", "--data-dir", dir.to_str().unwrap()];
    argv.extend_from_slice(extra);
    // The environment must not choose the key for this test.
    assert!(std::env::var_os("MP4TOMP3_JWT_SECRET").is_none());
    Config::from_args(<Serve as clap::Parser>::parse_from(argv).args).unwrap()
}

#[test]
fn nodes_of_a_cluster_without_a_jwt_secret_share_one_key_derived_from_the_cookie() {
    let (a, b, c, single) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let node = |dir: &tempfile::TempDir, listen: &str, cookie: &str| {
        config(
            dir.path(),
            &[
                "--cluster-listen",
                listen,
                "--peers",
                "127.0.0.2:4697,127.0.0.3:4697",
                "--cluster-cookie",
                cookie,
            ],
        )
    };
    let (a, b) = (
        node(&a, "127.0.0.2:4697", "shared"),
        node(&b, "127.0.0.3:4697", "shared"),
    );
    let who = crate::auth::Principal {
        email: "ann@example.com".into(),
        admin: false,
    };
    let token = a.keys.issue(&who, Duration::from_secs(60));
    assert_eq!(
        b.keys.verify(&token),
        Ok(who.clone()),
        "a token from node a works on node b"
    );
    // Another cluster (another cookie) does not accept it, and no key file is written.
    let other = node(&c, "127.0.0.2:4697", "another");
    assert!(other.keys.verify(&token).is_err());
    assert!(!c.path().join("jwt.key").exists());
    // A single node keeps its generated key in its data dir.
    let alone = config(single.path(), &[]);
    assert!(single.path().join("jwt.key").exists());
    assert!(alone.keys.verify(&token).is_err());
}

#[test]
fn kube_discovery_needs_cluster_tls_unless_clear_text_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |extra: &[&str]| {
        let mut argv = vec!["serve", "--data-dir", dir.path().to_str().unwrap()];
        argv.extend_from_slice(&[
            "--cluster-listen",
            "127.0.0.2:4697",
            "--cluster-cookie",
            "c",
            "--discovery",
            "kube",
        ]);
        argv.extend_from_slice(extra);
        Config::from_args(<Serve as clap::Parser>::parse_from(argv).args)
    };
    match parse(&[]) {
        Err(ConfigError::Invalid { flag, reason }) => {
            assert_eq!(flag, "cluster-tls-cert");
            assert!(reason.contains("--cluster-insecure"), "{reason}");
        }
        other => panic!("kube discovery without TLS started: {:?}", other.map(|_| ())),
    }
    let insecure = parse(&["--cluster-insecure"]).unwrap();
    assert!(insecure.cluster.unwrap().insecure);
    // With TLS the files are named (they are loaded when the mesh starts).
    let tls = parse(&[
        "--cluster-tls-cert",
        "/c.pem",
        "--cluster-tls-key",
        "/k.pem",
        "--cluster-tls-ca",
        "/ca.pem",
    ])
    .unwrap();
    let cluster = tls.cluster.unwrap();
    assert!(cluster.tls.is_some() && !cluster.insecure);
}
