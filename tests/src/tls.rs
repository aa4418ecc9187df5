//! Certificates for secure clusters, made with the real `failoverctl pki`,
//! and a small HTTPS client for the coordinator's HTTP listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proto::client::ClientTls;

use crate::bin;

/// A certificate authority directory made by `failoverctl pki init`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// `failoverctl pki init DIR`: the CA and the coordinator's certificate.
    pub fn init(dir: &Path) -> Pki {
        pki(&["init", &dir.display().to_string()]);
        Pki {
            dir: dir.to_owned(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The coordinator's certificate and key.
    pub fn coordinator(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("coordinator.pem"),
            self.dir.join("coordinator-key.pem"),
        )
    }

    /// `pki issue --node NAME` (once): the node's certificate and key.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("node-{name}.pem")),
            self.dir.join(format!("node-{name}-key.pem")),
        );
        if !cert.exists() {
            pki(&["issue", &self.dir.display().to_string(), "--node", name]);
        }
        (cert, key)
    }

    /// `pki issue --operator NAME --role ROLE` (once).
    pub fn operator(&self, name: &str, role: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("operator-{name}.pem")),
            self.dir.join(format!("operator-{name}-key.pem")),
        );
        if !cert.exists() {
            pki(&[
                "issue",
                &self.dir.display().to_string(),
                "--operator",
                name,
                "--role",
                role,
            ]);
        }
        (cert, key)
    }

    /// `pki issue --coordinator-cert`: a new server certificate, written over
    /// the old one (a rotation).
    pub fn reissue_coordinator(&self) {
        pki(&[
            "issue",
            &self.dir.display().to_string(),
            "--coordinator-cert",
        ]);
    }

    /// A certificate for node `name` from this CA that expired yesterday
    /// (`expired-NAME.pem`, `expired-NAME-key.pem`).
    pub fn expired_node(&self, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
        let ca = std::fs::read_to_string(self.ca()).expect("ca.pem");
        let ca_key = std::fs::read_to_string(self.dir.join("ca-key.pem")).expect("ca-key.pem");
        let issuer =
            Issuer::from_ca_cert_pem(&ca, KeyPair::from_pem(&ca_key).expect("CA key")).expect("CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:failover:node:{name}")
                .try_into()
                .expect("a URI"),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        let (cert_path, key_path) = (
            self.dir.join(format!("expired-{name}.pem")),
            self.dir.join(format!("expired-{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        (cert_path, key_path)
    }

    /// What a node's agent (or a raw session speaking for it) presents.
    pub fn node_tls(&self, name: &str) -> ClientTls {
        let (cert, key) = self.node(name);
        ClientTls {
            ca: Some(self.ca()),
            cert: Some(cert),
            key: Some(key),
        }
    }

    /// The CA alone: a client with no certificate of its own.
    pub fn anonymous_tls(&self) -> ClientTls {
        ClientTls {
            ca: Some(self.ca()),
            cert: None,
            key: None,
        }
    }
}

/// Runs `failoverctl pki ARGS` and insists that it succeeds.
pub fn pki(args: &[&str]) -> String {
    let out = Command::new(bin("failoverctl"))
        .arg("pki")
        .args(args)
        .output()
        .expect("failoverctl runs");
    assert!(
        out.status.success(),
        "failoverctl pki {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A minimal HTTP/1.0 GET over TLS, checking the server against `ca`:
/// status code and body, or `None` if it cannot be had.
pub fn https_get(addr: SocketAddr, path: &str, ca: &Path) -> Option<(u16, String)> {
    https_request(addr, "GET", path, ca, None, None)
}

/// A minimal HTTP/1.0 request over TLS (the server checked against `ca`).
pub fn https_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ca: &Path,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    proto::client::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).ok()?;
    for cert in rustls_pki_certs(&pem) {
        roots.add(cert).ok()?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = crate::request_head(method, path, "localhost", token, body);
    tls.write_all(head.as_bytes()).ok()?;
    let mut response = Vec::new();
    // A server that closes without close_notify still sent everything.
    let _ = tls.read_to_end(&mut response);
    crate::parse_response(&String::from_utf8_lossy(&response))
}

/// The certificate (DER) the server at `addr` presents, checked against
/// `ca`.
pub fn served_certificate(addr: SocketAddr, ca: &Path) -> Option<Vec<u8>> {
    proto::client::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_certs(&std::fs::read(ca).ok()?) {
        roots.add(cert).ok()?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(conn.peer_certificates()?.first()?.as_ref().to_vec())
}

/// The first certificate (DER) in a PEM file.
pub fn pem_certificate(path: &Path) -> Option<Vec<u8>> {
    rustls_pki_certs(&std::fs::read(path).ok()?)
        .first()
        .map(|c| c.as_ref().to_vec())
}

fn rustls_pki_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}
