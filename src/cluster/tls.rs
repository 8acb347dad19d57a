//! TLS between nodes (mutual): every node presents a certificate signed by the cluster's
//! CA and accepts only peers that do the same. The cookie handshake then runs inside TLS.
//!
//! Peers are dialled by pod IP, which no certificate names, so every node's certificate
//! carries one shared DNS name (`--cluster-tls-server-name`, default
//! `mp4tomp3-cluster`) that dialers verify. One certificate and key for the whole
//! StatefulSet (from a Secret) is the simplest setup.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A node's TLS settings, loaded and checked.
#[derive(Clone)]
pub struct ClusterTls {
    /// For inbound sessions.
    pub acceptor: TlsAcceptor,
    /// For dials.
    pub connector: TlsConnector,
    /// The name dialers verify.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads what the configuration names.
    pub fn from_files(files: &crate::config::TlsFiles) -> Result<ClusterTls, String> {
        ClusterTls::load(&files.cert, &files.key, &files.ca, &files.server_name)
    }

    /// Loads the node's certificate chain and key and the CA (all PEM). The error says which
    /// file and why, in one line.
    pub fn load(cert: &Path, key: &Path, ca: &Path, server_name: &str) -> Result<ClusterTls, String> {
        let certs = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no private key: {e}", key.display()))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in read_certs(ca)? {
            roots
                .add(ca_cert)
                .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder(roots.clone())
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        let server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}
