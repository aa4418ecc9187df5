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

/// How often clients ping a connection they hold open.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

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
        .tcp_nodelay(true)
        // A coordinator closes connections it hears nothing on for its
        // idle timeout (60 s by default); pings keep a quiet one (an event
        // watch with no events) open, and find a dead one.
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_INTERVAL)
        .keep_alive_while_idle(true);
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

/// What is wrong with `tls` for a client that must be `expected` (a node's
/// agent): files that cannot be read, a CA file that holds no
/// certificate, a key that does not belong to the certificate, a
/// certificate that names someone else. Empty when all is well.
pub fn check_files(tls: &ClientTls, expected: Option<&crate::identity::Named>) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut problems = Vec::new();
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        Ok(certs)
    };
    if let Some(ca) = &tls.ca
        && let Err(e) = certs(ca)
    {
        problems.push(format!("tls.ca: {e}"));
    }
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        if tls.cert.is_some() != tls.key.is_some() {
            problems.push("tls.cert and tls.key go together".to_owned());
        }
        return problems;
    };
    let chain = match certs(cert) {
        Ok(chain) => chain,
        Err(e) => {
            problems.push(format!("tls.cert: {e}"));
            return problems;
        }
    };
    let key_der = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("tls.key: {}: {e}", key.display()));
            return problems;
        }
    };
    let leaf = chain[0].clone();
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key_der, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => problems.push(format!(
            "tls.key: {} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        )),
        Err(e) => problems.push(format!("tls.key: {}: {e}", key.display())),
    }
    if let Some(expected) = expected {
        match crate::identity::named_by(&leaf) {
            Ok(Some(named)) if &named == expected => {}
            Ok(Some(named)) => problems.push(format!(
                "tls.cert: {} names {named}, not {expected}",
                cert.display()
            )),
            Ok(None) => problems.push(format!(
                "tls.cert: {} names nobody (no urn:failover: URI); it must name {expected}",
                cert.display()
            )),
            Err(e) => problems.push(format!("tls.cert: {}: {e}", cert.display())),
        }
    }
    problems
}

/// An error from reaching `url`, said once (transport errors repeat their
/// causes) and with what most likely went wrong when it is a TLS mistake.
pub fn explain(url: &str, error: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in error.split(": ") {
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    let text = parts.join(": ");
    let lower = text.to_ascii_lowercase();
    let tls = url.starts_with("https://");
    let refused = lower.contains("connection refused") || lower.contains("os error 111");
    let unresolved = lower.contains("dns error")
        || lower.contains("name or service not known")
        || lower.contains("failed to lookup address");
    let hint = if refused {
        Some("nothing listens there: is the coordinator running, and is this its address?")
    } else if unresolved {
        Some("this host name does not resolve from here: check the URL (or give an address)")
    } else if !tls
        && (lower.contains("frame with invalid size")
            || lower.contains("frame_size_error")
            || lower.contains("transport error"))
    {
        Some(
            "the coordinator may be serving TLS: use an https:// URL with --tls-ca \
             (and your certificate)",
        )
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        Some("the coordinator's certificate is not signed by the CA given with --tls-ca")
    } else if lower.contains("not valid for name") {
        Some(
            "the coordinator's certificate does not name the host in this URL: reissue it \
             with that name (failoverctl pki issue DIR --coordinator-cert --san HOST)",
        )
    } else if lower.contains("expired") {
        Some("a certificate has expired")
    } else if tls
        && (lower.contains("canceled")
            || lower.contains("connection closed")
            || lower.contains("fatal alert")
            || lower.contains("decrypterror"))
    {
        Some(
            "the coordinator ended the TLS handshake: is your certificate signed by the \
             coordinator's client CA, still valid, and does --tls-key belong to it?",
        )
    } else if tls && lower.contains("transport error") {
        Some(
            "check --tls-ca (the CA certificate, not its key) and that --tls-cert and \
             --tls-key are a matching certificate and key",
        )
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_said_once_and_tls_mistakes_explained() {
        let e = explain(
            "https://a:1",
            "transport error: invalid peer certificate: UnknownIssuer: invalid peer certificate: UnknownIssuer",
        );
        assert_eq!(e.matches("UnknownIssuer").count(), 1, "{e}");
        assert!(e.contains("not signed by the CA"), "{e}");
        let e = explain("http://a:1", "coordinator failed: transport error");
        assert!(e.contains("https://"), "{e}");
        let e = explain(
            "http://a:1",
            "transport error: Connection refused (os error 111)",
        );
        assert!(e.contains("nothing listens there"), "{e}");
        assert!(!e.contains("https://"), "{e}");
    }
}
