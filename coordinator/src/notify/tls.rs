//! The TLS client configuration of webhook and mail sinks: the system's
//! CAs, plus the sink's own `ca_file`.

use std::path::Path;

use anyhow::Context;

/// Roots: the system's trusted CAs and the file's (PEM).
pub(crate) fn roots(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ca_file {
        let pem = std::fs::read(file).with_context(|| format!("ca_file {}", file.display()))?;
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls::pki_types::CertificateDer<'static> =
                cert.with_context(|| format!("ca_file {}", file.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("ca_file {}", file.display()))?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!("ca_file {} holds no certificate", file.display());
        }
    }
    Ok(roots)
}

pub(crate) fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth())
}
