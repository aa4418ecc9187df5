//! Raw HTTP/2 clients that misbehave on purpose: requests sent halfway and
//! held, and calls made without a client certificate, over TLS checked
//! against the cluster's CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

/// Open connections holding requests that never finish arriving; they
/// close when this is dropped.
pub struct HalfSent {
    /// Requests the coordinator took in (it may refuse the rest at once).
    pub sent: usize,
    _runtime: tokio::runtime::Runtime,
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    tls_config_as(ca, None)
}

/// With `identity` (certificate and key files), a client certificate.
fn tls_config_as(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    proto::client::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA added");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .expect("certificate file")
                .map(|c| c.expect("certificate"))
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<h2::client::SendRequest<Bytes>> {
    connect_with(addr, config, h2::client::Builder::new()).await
}

async fn connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    builder: h2::client::Builder,
) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    let (client, connection) = builder.handshake(tls).await.ok()?;
    tokio::spawn(connection);
    client.ready().await.ok()
}

fn call(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::post(format!("https://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// `connections` connections without a client certificate, each sending
/// `per_connection` calls to `path` whose message is announced as 1000
/// bytes and never sent past its first byte. Pings keep the connections
/// from counting as idle.
pub fn half_sent(
    addr: SocketAddr,
    ca: &Path,
    path: &str,
    connections: usize,
    per_connection: usize,
) -> HalfSent {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = tls_config(ca);
    let path = path.to_owned();
    let sent = runtime.block_on(async move {
        let mut sent = 0;
        for _ in 0..connections {
            let Some(mut client) = connect(addr, config.clone()).await else {
                continue;
            };
            for _ in 0..per_connection {
                let Ok((response, mut body)) = client.send_request(call(addr, &path), false) else {
                    break;
                };
                // The gRPC frame header says 1000 bytes; one follows.
                let _ = body.send_data(Bytes::from_static(b"\0\0\0\x03\xe8\x0a"), false);
                sent += 1;
                tokio::spawn(async move {
                    let _held = body;
                    let _ = response.await;
                    std::future::pending::<()>().await;
                });
            }
            tokio::spawn(async move {
                let _held = client;
                std::future::pending::<()>().await;
            });
        }
        sent
    });
    HalfSent {
        sent,
        _runtime: runtime,
    }
}

/// Calls `path` with an empty message without a client certificate; the
/// answer's `grpc-status` (in headers or trailers).
pub fn call_status(addr: SocketAddr, ca: &Path, path: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let config = tls_config(ca);
    runtime.block_on(async move {
        tokio::time::timeout(Duration::from_secs(10), async move {
            let mut client = connect(addr, config).await?;
            let (response, mut body) = client.send_request(call(addr, path), false).ok()?;
            body.send_data(Bytes::from_static(b"\0\0\0\0\0"), true)
                .ok()?;
            let response = response.await.ok()?;
            let status = |map: &http::HeaderMap| {
                map.get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if let Some(s) = status(response.headers()) {
                return Some(s);
            }
            let mut answer = response.into_body();
            while let Some(chunk) = answer.data().await {
                let _ = chunk.ok()?;
            }
            status(&answer.trailers().await.ok()??)
        })
        .await
        .ok()?
    })
}

/// `connections` connections with the client certificate `identity`, that
/// announce a receive window of 0 (so no answer can be sent to them), each
/// making `per_connection` complete calls to `path` and never reading.
/// How many calls were refused at once because too many answers wait to be
/// read; the connections close when this returns.
pub fn never_read(
    addr: SocketAddr,
    ca: &Path,
    identity: (&Path, &Path),
    path: &str,
    connections: usize,
    per_connection: usize,
) -> usize {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = tls_config_as(ca, Some(identity));
    let path = path.to_owned();
    runtime.block_on(async move {
        let mut answers = Vec::new();
        let mut held = Vec::new();
        for _ in 0..connections {
            let mut builder = h2::client::Builder::new();
            builder.initial_window_size(0);
            let Some(mut client) = connect_with(addr, config.clone(), builder).await else {
                continue;
            };
            for _ in 0..per_connection {
                let Ok((response, mut body)) = client.send_request(call(addr, &path), false) else {
                    break;
                };
                let _ = body.send_data(Bytes::from_static(b"\0\0\0\0\0"), true);
                answers.push(response);
                // One at a time, so each has arrived before the next.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            held.push(client);
        }
        // Headers are not flow-controlled: a refusal arrives whole.
        let mut refused = 0;
        for response in answers {
            let got = tokio::time::timeout(Duration::from_millis(500), response).await;
            if let Ok(Ok(r)) = got {
                let header = |name: &str| {
                    r.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                if header("grpc-status") == "8" && header("grpc-message").contains("read") {
                    refused += 1;
                }
            }
        }
        drop(held);
        refused
    })
}
