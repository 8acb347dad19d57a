//! Certificates for TLS between nodes.

/// Writes a CA and a node certificate (for `mp4tomp3-cluster`) signed by it under `dir`,
/// unless `dir` has them already (every node of a test shares one); returns (cert, key, ca)
/// paths.
pub fn node_pki(dir: &std::path::Path) -> [String; 3] {
    let paths = ["node.pem", "node.key", "ca.pem"].map(|f| dir.join(f).to_string_lossy().into_owned());
    if paths.iter().all(|p| std::path::Path::new(p).exists()) {
        return paths;
    }
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["mp4tomp3-cluster".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(&paths[0], cert.pem()).unwrap();
    std::fs::write(&paths[1], key.serialize_pem()).unwrap();
    std::fs::write(&paths[2], ca.pem()).unwrap();
    paths
}

/// The `--cluster-tls-*` flags of a node using the PKI under `dir`.
pub fn tls_args(dir: &std::path::Path) -> Vec<String> {
    let [cert, key, ca] = node_pki(dir);
    flags(&cert, &key, &ca)
}

/// The `--cluster-tls-*` flags for these files.
pub fn flags(cert: &str, key: &str, ca: &str) -> Vec<String> {
    [
        "--cluster-tls-cert",
        cert,
        "--cluster-tls-key",
        key,
        "--cluster-tls-ca",
        ca,
    ]
    .map(String::from)
    .to_vec()
}
