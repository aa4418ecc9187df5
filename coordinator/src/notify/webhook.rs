//! The webhook sink: each event POSTed as JSON, signed with HMAC-SHA256
//! of the body under the shared secret (`X-Failover-Signature:
//! sha256=HEX`), so the receiver can tell it from a forgery.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::config::NotifyConfig;
use super::message;
use crate::model::EventRecord;

/// The most of a receiver's answer that is read (for the log).
const MAX_ANSWER_BYTES: usize = 4096;

pub(crate) struct Webhook {
    url: http::Uri,
    key: ring::hmac::Key,
    timeout: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Webhook {
    pub(crate) fn new(config: &NotifyConfig) -> anyhow::Result<Webhook> {
        let url = config.url.as_deref().unwrap_or_default();
        let secret = config.secret.as_deref().unwrap_or_default();
        let tls = super::tls::client_config(config.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Webhook {
            url: url.parse().context("url")?,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            timeout: config.timeout(),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        })
    }

    pub(crate) async fn deliver(&self, event: &EventRecord) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&message::json(event))?;
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("failover-coordinator/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-failover-signature", signature(&self.key, &body))
            .header("x-failover-event", event.kind.as_str())
            .header("x-failover-delivery", event.seq.to_string())
            .body(Full::new(Bytes::from(body)))?;
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self.client.request(request).await.map_err(connect_error)?;
            let status = response.status();
            let mut text = Vec::new();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    let room = MAX_ANSWER_BYTES.saturating_sub(text.len());
                    text.extend_from_slice(&data[..data.len().min(room)]);
                    if room == 0 {
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>((status, text))
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))?;
        let (status, text) = answer.map_err(|e| anyhow::anyhow!("{e:#}"))?;
        if !status.is_success() {
            // Quoted: what a receiver says cannot forge log lines.
            anyhow::bail!(
                "the receiver answered {status}: {:?}",
                String::from_utf8_lossy(&text).trim()
            );
        }
        Ok(())
    }
}

/// The innermost cause of a failed request ("Connection refused"), not the
/// client's layers of "client error (Connect)".
fn connect_error(e: hyper_util::client::legacy::Error) -> anyhow::Error {
    let mut cause: &dyn std::error::Error = &e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    anyhow::anyhow!("{cause}")
}
