//! The mail sink: each event as a plain-text mail (a short subject, one
//! field a line in the body) through an SMTP server, with STARTTLS or TLS
//! and AUTH when configured.
//!
//! lettre speaks SMTP over a stream this file opens and bounds: a server
//! (or anyone on the path before STARTTLS) that sends without end is cut
//! off after [`MAX_READ_BYTES`], since a reply line is read whole before
//! its length is checked. One connection per mail, all within the sink's
//! timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::config::{NotifyConfig, SmtpTls, read_password};
use super::message;
use crate::model::EventRecord;

/// The most a mail server may send on one connection: a whole dialogue is
/// a few kilobytes.
const MAX_READ_BYTES: u64 = 256 * 1024;

pub(crate) struct Smtp {
    host: String,
    port: u16,
    mode: SmtpTls,
    /// For STARTTLS (lettre upgrades the stream).
    starttls: Option<TlsParameters>,
    /// For implicit TLS (this file wraps the stream).
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<Credentials>,
    timeout: Duration,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Smtp {
    pub(crate) fn new(config: &NotifyConfig) -> anyhow::Result<Smtp> {
        let host = config.host.clone().unwrap_or_default();
        let mode = config.smtp_tls();
        let starttls = match mode {
            SmtpTls::Starttls => {
                // The system's CAs, and the sink's own.
                let mut parameters = TlsParameters::builder(host.clone());
                if let Some(file) = &config.ca_file {
                    let pem = std::fs::read(file)
                        .with_context(|| format!("ca_file {}", file.display()))?;
                    parameters = parameters.add_root_certificate(
                        lettre::transport::smtp::client::Certificate::from_pem(&pem)
                            .with_context(|| format!("ca_file {}", file.display()))?,
                    );
                }
                Some(
                    parameters
                        .build_rustls()
                        .context("TLS to the mail server")?,
                )
            }
            _ => None,
        };
        let credentials = match (&config.username, &config.password_file) {
            (Some(user), Some(file)) => Some(Credentials::new(user.clone(), read_password(file)?)),
            _ => None,
        };
        let from = config.from.as_deref().unwrap_or_default().parse()?;
        let to = config
            .to
            .iter()
            .map(|t| t.parse())
            .collect::<Result<Vec<Mailbox>, _>>()?;
        Ok(Smtp {
            host,
            port: config.smtp_port(),
            mode,
            starttls,
            tls: Arc::new(super::tls::client_config(config.ca_file.as_deref())?),
            credentials,
            timeout: config.timeout(),
            from,
            to,
        })
    }

    pub(crate) async fn deliver(&self, event: &EventRecord) -> anyhow::Result<()> {
        let mut mail = Message::builder()
            .from(self.from.clone())
            .subject(message::subject(event))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            mail = mail.to(to.clone());
        }
        let mail = mail.body(message::body(event))?;
        tokio::time::timeout(self.timeout, self.send(&mail))
            .await
            .map_err(|_| {
                anyhow::anyhow!("the mail server did not finish within {:?}", self.timeout)
            })?
    }

    async fn send(&self, mail: &Message) -> anyhow::Result<()> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the mail server {}:{}: {e}",
                    self.host,
                    self.port
                )
            })?;
        let peer = tcp.peer_addr()?;
        let stream: Box<dyn AsyncTokioStream> = match self.mode {
            SmtpTls::Tls => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| anyhow::anyhow!("TLS to the mail server: {e}"))?;
                Box::new(Bounded::new(tls, peer))
            }
            _ => Box::new(Bounded::new(tcp, peer)),
        };
        let hello = ClientId::default();
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &hello)
            .await
            .map_err(|e| anyhow::anyhow!("the mail server: {e}"))?;
        if let Some(parameters) = &self.starttls {
            connection
                .starttls(parameters.clone(), &hello)
                .await
                .map_err(|e| anyhow::anyhow!("the mail server (STARTTLS): {e}"))?;
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| anyhow::anyhow!("the mail server (AUTH): {e}"))?;
        }
        connection
            .send(mail.envelope(), &mail.formatted())
            .await
            .map_err(|e| anyhow::anyhow!("the mail server: {e}"))?;
        let _ = connection.quit().await;
        Ok(())
    }
}

/// A stream that fails once its peer has sent more than
/// [`MAX_READ_BYTES`].
#[derive(Debug)]
struct Bounded<S> {
    inner: S,
    peer: SocketAddr,
    read: u64,
}

impl<S> Bounded<S> {
    fn new(inner: S, peer: SocketAddr) -> Bounded<S> {
        Bounded {
            inner,
            peer,
            read: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read > MAX_READ_BYTES {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the mail server sent more than {MAX_READ_BYTES} bytes"
            ))));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.read = self.read.saturating_add(got as u64);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug> AsyncTokioStream
    for Bounded<S>
{
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}
