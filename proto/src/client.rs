//! How an agent, failoverctl or a test reaches a coordinator: a gRPC
//! endpoint for a URL, over TLS when the URL is `https://` (checking the
//! coordinator's certificate against a CA, and presenting a client
//! certificate when one is given). The files are read each time an
//! endpoint is made, so a rotated certificate is used from the next
//! connection on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The TLS files a client uses; all optional until the URL is `https://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// This client's certificate and key (an agent's node certificate, an
    /// operator's certificate).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{url:?} is not a valid coordinator URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "{url} is an https:// URL: give the CA that signed the coordinator's certificate \
         (--tls-ca)"
    )]
    NoCa { url: String },
    #[error(
        "a client certificate needs its key and the other way round (--tls-cert with --tls-key)"
    )]
    HalfIdentity,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings for {url} are unusable: {reason}")]
    Tls { url: String, reason: String },
}

/// A ring-backed rustls for every TLS connection this process makes
/// (installed once; later calls do nothing).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An endpoint for `url` with `tls` applied when it is `https://`.
pub fn endpoint(
    url: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<Endpoint, ClientError> {
    install_crypto();
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let ca = tls.ca.as_deref().ok_or_else(|| ClientError::NoCa {
        url: url.to_owned(),
    })?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err(ClientError::HalfIdentity),
    }
    endpoint.tls_config(config).map_err(|e| ClientError::Tls {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })
}
