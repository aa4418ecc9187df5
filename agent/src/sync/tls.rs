//! TLS between agents, with the node certificates they already hold for
//! the coordinator: the peer service asks every client for a certificate
//! from the same CA that names a node, and a standby accepts a primary only
//! if its certificate, from that CA, names the very node the coordinator
//! said is primary (node certificates name nodes, not hosts, so no host
//! name is checked). Without TLS files, peers speak plaintext, as the
//! agent's link with the coordinator does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tonic::transport::{Channel, Endpoint, ServerTlsConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer TLS material: the server side for tonic, and what a client
/// needs to check a primary and present itself.
#[derive(Clone)]
pub struct PeerTls {
    pub server: ServerTlsConfig,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl PeerTls {
    /// From the agent's CA, node certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<PeerTls> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>()?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)?;
        let server = ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(ca_pem))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT);
        Ok(PeerTls {
            server,
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key_der),
        })
    }

    fn client_config(&self, expected: &str) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain_check =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("the CA cannot verify certificates: {e}"))?;
        let verifier = NodeVerifier {
            chain_check,
            expected: expected.to_owned(),
            provider: provider.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("the node certificate and key do not match: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Checks a primary's certificate: signed through the fleet's CA (as a
/// node certificate is) and naming `expected`.
#[derive(Debug)]
struct NodeVerifier {
    chain_check: Arc<dyn ClientCertVerifier>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain_check
            .verify_client_cert(end_entity, intermediates, now)?;
        match proto::identity::named_by(end_entity) {
            Ok(Some(proto::identity::Named::Node(node))) if node == self.expected => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::General(format!(
                "the peer's certificate does not name node {}",
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A channel to the peer service at `address` (host:port) of node
/// `expected`: over TLS checking that node's certificate when `tls` is
/// given, else plaintext. Connects on first use.
pub fn channel(address: &str, expected: &str, tls: Option<&PeerTls>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{address:?} is not a peer address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(proto::client::PING_INTERVAL)
        .keep_alive_timeout(proto::client::PING_INTERVAL);
    let Some(tls) = tls else {
        return Ok(endpoint.connect_lazy());
    };
    let config = Arc::new(tls.client_config(expected)?);
    let address = address.to_owned();
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let config = config.clone();
        let address = address.clone();
        async move {
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
                    .await
                    .map_err(|_| std::io::Error::other("connecting timed out"))??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("failover-peer").map_err(std::io::Error::other)?;
            let stream = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| std::io::Error::other("the TLS handshake timed out"))??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
