//! The mail sink: each event as a plain-text mail (a short subject, one
//! field a line in the body) through an SMTP server, with STARTTLS or TLS
//! and AUTH when configured.

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{NotifyConfig, SmtpTls, read_password};
use super::message;
use crate::model::EventRecord;

pub(crate) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Smtp {
    pub(crate) fn new(config: &NotifyConfig) -> anyhow::Result<Smtp> {
        let host = config.host.clone().unwrap_or_default();
        let tls = match config.smtp_tls() {
            SmtpTls::None => Tls::None,
            mode => {
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
                let parameters = parameters
                    .build_rustls()
                    .context("TLS to the mail server")?;
                match mode {
                    SmtpTls::Tls => Tls::Wrapper(parameters),
                    _ => Tls::Required(parameters),
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port())
            .tls(tls)
            .timeout(Some(config.timeout()));
        if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
            builder = builder.credentials(Credentials::new(user.clone(), read_password(file)?));
        }
        let from = config.from.as_deref().unwrap_or_default().parse()?;
        let to = config
            .to
            .iter()
            .map(|t| t.parse())
            .collect::<Result<Vec<Mailbox>, _>>()?;
        Ok(Smtp {
            transport: builder.build(),
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
        self.transport
            .send(mail)
            .await
            .map_err(|e| anyhow::anyhow!("the mail server: {e}"))?;
        Ok(())
    }
}
