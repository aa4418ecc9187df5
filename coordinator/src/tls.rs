//! TLS for the coordinator's listeners: the rustls server configuration
//! built from PEM files (certificate chain, key, and the CA that signs
//! client certificates), reloaded when the files change or on SIGHUP
//! (`reload.rs`). A reload swaps the configuration new connections get;
//! open connections (agent sessions) keep theirs and are never dropped. A
//! file that does not load leaves the running configuration in place, with
//! an error logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::reload::Reload;

/// Where the coordinator's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Signs the certificates of agents and operators; without it no
    /// client certificate is asked for (operators use tokens).
    pub client_ca: Option<PathBuf>,
}

/// The current server configurations (one per ALPN set) and how to renew
/// them.
pub(crate) struct TlsState {
    files: TlsFiles,
    grpc: RwLock<Arc<ServerConfig>>,
    http: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads the files; an error here stops the coordinator from starting.
    pub(crate) fn load(files: TlsFiles) -> anyhow::Result<Arc<TlsState>> {
        let (grpc, http) = configs(&files)?;
        Ok(Arc::new(TlsState {
            files,
            grpc: RwLock::new(grpc),
            http: RwLock::new(http),
        }))
    }

    /// The configuration for a new gRPC connection (HTTP/2 only).
    pub(crate) fn grpc(&self) -> Arc<ServerConfig> {
        read(&self.grpc)
    }

    /// The configuration for a new HTTP connection (HTTP/1.1 and HTTP/2).
    pub(crate) fn http(&self) -> Arc<ServerConfig> {
        read(&self.http)
    }
}

impl Reload for TlsState {
    fn files(&self) -> Vec<PathBuf> {
        [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// Loads the files again; on success new connections use them.
    fn reload(&self, why: &str) {
        match configs(&self.files) {
            Ok((grpc, http)) => {
                *write(&self.grpc) = grpc;
                *write(&self.http) = http;
                tracing::info!(why, "TLS certificates reloaded: new connections use them");
            }
            Err(e) => {
                tracing::error!(
                    why,
                    error = format!("{e:#}"),
                    "TLS certificates not reloaded: keeping the ones in use"
                );
            }
        }
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// The two server configurations for `files`: gRPC (h2) and HTTP.
fn configs(files: &TlsFiles) -> anyhow::Result<(Arc<ServerConfig>, Arc<ServerConfig>)> {
    let grpc = server_config(files, &[b"h2"])?;
    let http = server_config(files, &[b"h2", b"http/1.1"])?;
    Ok((Arc::new(grpc), Arc::new(http)))
}

fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = Arc::new(root_store(ca)?);
            // Certificates are checked when offered (chain, dates); one is
            // not required at this layer: operators may use tokens instead,
            // and the API layer decides what each caller may do.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .context("the client CA cannot verify certificates")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The certificates in a PEM file (a chain: the first is the leaf).
pub(crate) fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

fn root_store(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds a certificate that is no CA", path.display()))?;
    }
    Ok(roots)
}
