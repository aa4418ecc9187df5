//! `[[notify]]`: the sinks operators are told through, as written in the
//! coordinator's config file, and their checks (every mistake names the
//! sink and the key).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::model::EventKind;

/// One `[[notify]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// What delivers: `webhook`, `smtp` or `exec`.
    pub kind: SinkKind,
    /// The sink's name in logs and metrics, and the key of its delivery
    /// cursor in the store [default: the kind and a digest of where it
    /// delivers, so reordering sinks keeps every cursor].
    pub name: Option<String>,
    /// Event kinds to deliver [default: all].
    #[serde(default)]
    pub events: Vec<String>,
    /// Groups whose events to deliver [default: all].
    #[serde(default)]
    pub groups: Vec<String>,
    /// How long one delivery may take [default: 10s].
    #[serde(default, with = "proto::duration::serde::option")]
    pub timeout: Option<Duration>,
    /// webhook: where to POST each event (`http://` or `https://`).
    pub url: Option<String>,
    /// webhook: the shared secret of the signature header.
    pub secret: Option<String>,
    /// smtp: the mail server.
    pub host: Option<String>,
    /// smtp: its port [default: 25, 587 with starttls, 465 with tls].
    pub port: Option<u16>,
    /// smtp: `none`, `starttls` or `tls` [default: starttls].
    pub tls: Option<SmtpTls>,
    /// smtp: user name for AUTH, with `password_file`.
    pub username: Option<String>,
    /// smtp: a file holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// smtp: the sender's address.
    pub from: Option<String>,
    /// smtp: the recipients' addresses.
    #[serde(default)]
    pub to: Vec<String>,
    /// webhook and smtp: a CA (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// exec: the program and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Webhook,
    Smtp,
    Exec,
}

impl SinkKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Smtp => "smtp",
            SinkKind::Exec => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

/// The default time one delivery may take.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many sinks: each holds a task and a cursor.
pub(crate) const MAX_SINKS: usize = 64;

impl NotifyConfig {
    /// The sink's name: given, or its kind and where it delivers.
    pub(crate) fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let target = match self.kind {
            SinkKind::Webhook => self.url.clone().unwrap_or_default(),
            SinkKind::Smtp => format!(
                "{}:{:?}:{}",
                self.host.as_deref().unwrap_or_default(),
                self.port,
                self.to.join(",")
            ),
            SinkKind::Exec => self.command.join("\0"),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, target.as_bytes());
        let hex: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}-{hex}", self.kind.as_str())
    }

    /// The sink as a `[[notify]]` table, for `--check-config` (the secret
    /// is not shown).
    pub(crate) fn describe(&self) -> String {
        let mut text = format!(
            "\n[[notify]]\nkind = \"{}\"\nname = {:?}\ntimeout = \"{}\"\n",
            self.kind.as_str(),
            self.name(),
            humantime::format_duration(self.timeout())
        );
        let list = |items: &[String]| {
            if items.is_empty() {
                "all".to_owned()
            } else {
                format!("{items:?}")
            }
        };
        let line = |key: &str, value: String| format!("{key} = {value}\n");
        match self.kind {
            SinkKind::Webhook => {
                text.push_str(&line(
                    "url",
                    format!("{:?}", self.url.as_deref().unwrap_or_default()),
                ));
                text.push_str("# secret is set\n");
            }
            SinkKind::Smtp => {
                text.push_str(&line(
                    "host",
                    format!("{:?}", self.host.as_deref().unwrap_or_default()),
                ));
                text.push_str(&line("port", self.smtp_port().to_string()));
                let tls = match self.smtp_tls() {
                    SmtpTls::None => "none",
                    SmtpTls::Starttls => "starttls",
                    SmtpTls::Tls => "tls",
                };
                text.push_str(&line("tls", format!("{tls:?}")));
                if let Some(user) = &self.username {
                    text.push_str(&line("username", format!("{user:?}")));
                }
                if let Some(file) = &self.password_file {
                    text.push_str(&line(
                        "password_file",
                        format!("{:?}", file.display().to_string()),
                    ));
                }
                text.push_str(&line(
                    "from",
                    format!("{:?}", self.from.as_deref().unwrap_or_default()),
                ));
                text.push_str(&line("to", format!("{:?}", self.to)));
            }
            SinkKind::Exec => text.push_str(&line("command", format!("{:?}", self.command))),
        }
        if let Some(file) = &self.ca_file {
            text.push_str(&line(
                "ca_file",
                format!("{:?}", file.display().to_string()),
            ));
        }
        if self.events.is_empty() {
            text.push_str("# events: all\n");
        } else {
            text.push_str(&line("events", list(&self.events)));
        }
        if self.groups.is_empty() {
            text.push_str("# groups: all\n");
        } else {
            text.push_str(&line("groups", list(&self.groups)));
        }
        text
    }

    /// What is wrong with the program an exec sink runs, if anything: a
    /// path that does not name an executable file. (A bare name is looked
    /// up in PATH when it runs.)
    pub(crate) fn program_problem(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let program = self.command.first()?;
        if self.kind != SinkKind::Exec || !program.contains('/') {
            return None;
        }
        let executable = std::fs::metadata(program)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        (!executable).then(|| {
            format!(
                "[[notify]] {}: command {program:?} is not an executable file",
                self.name()
            )
        })
    }

    /// Where the sink delivers, for the log: the URL without its query,
    /// the mail server and recipients, or the program.
    pub(crate) fn destination(&self) -> String {
        match self.kind {
            SinkKind::Webhook => {
                let url = self.url.as_deref().unwrap_or_default();
                url.split(['?', '#']).next().unwrap_or_default().to_owned()
            }
            SinkKind::Smtp => format!(
                "smtp://{}:{} to {}",
                self.host.as_deref().unwrap_or_default(),
                self.smtp_port(),
                self.to.join(",")
            ),
            SinkKind::Exec => self.command.first().cloned().unwrap_or_default(),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Whether this sink wants `kind` events of `group`.
    pub(crate) fn wants(&self, kind: EventKind, group: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == kind.as_str()))
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
    }

    /// Checks the keys this kind needs and refuses the others'.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let name = self.name();
        proto::names::validate_group_name(&name).map_err(|e| {
            anyhow::anyhow!(
                "name: {}",
                e.to_string().replacen("group name", "sink name", 1)
            )
        })?;
        for event in &self.events {
            if EventKind::from_name(event).is_none() {
                bail!(
                    "events: {event:?} is not an event kind (one of: {})",
                    EventKind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        for group in &self.groups {
            proto::names::validate_group_name(group).map_err(|e| anyhow::anyhow!("groups: {e}"))?;
        }
        let timeout = self.timeout();
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&timeout) {
            bail!(
                "timeout must be between 100ms and 5m, got {}",
                humantime::format_duration(timeout)
            );
        }
        let webhook = [
            ("url", self.url.is_some()),
            ("secret", self.secret.is_some()),
        ];
        let smtp = [
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("tls", self.tls.is_some()),
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
            ("from", self.from.is_some()),
            ("to", !self.to.is_empty()),
        ];
        let exec = [("command", !self.command.is_empty())];
        let tls = [("ca_file", self.ca_file.is_some())];
        let foreign: Vec<&[(&str, bool)]> = match self.kind {
            SinkKind::Webhook => vec![&smtp, &exec],
            SinkKind::Smtp => vec![&webhook, &exec],
            SinkKind::Exec => vec![&webhook, &smtp, &tls],
        };
        for (key, given) in foreign.into_iter().flatten() {
            if *given {
                bail!("{key} is not a key of {} sinks", self.kind.as_str());
            }
        }
        match self.kind {
            SinkKind::Webhook => self.validate_webhook(),
            SinkKind::Smtp => self.validate_smtp(),
            SinkKind::Exec => {
                if self.command.is_empty() || self.command[0].is_empty() {
                    bail!(
                        "command is missing: the program to run, e.g. [\"/etc/failover/notify.sh\"]"
                    );
                }
                Ok(())
            }
        }
    }

    fn validate_webhook(&self) -> anyhow::Result<()> {
        let Some(url) = &self.url else {
            bail!(
                "url is missing: where to POST each event, e.g. \"https://hooks.example.com/failover\""
            );
        };
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            bail!("url {url:?}: write it as http://HOST/PATH or https://HOST/PATH");
        }
        match &self.secret {
            None => bail!(
                "secret is missing: the shared secret the receiver checks the X-Failover-Signature header with"
            ),
            Some(s) if s.len() < 16 => bail!("secret is too short: use at least 16 characters"),
            Some(_) => {}
        }
        Ok(())
    }

    fn validate_smtp(&self) -> anyhow::Result<()> {
        match &self.host {
            None => bail!("host is missing: the mail server, e.g. \"smtp.example.com\""),
            Some(h) if h.is_empty() => bail!("host is empty"),
            Some(_) => {}
        }
        if self.port == Some(0) {
            bail!("port must be between 1 and 65535");
        }
        let Some(from) = &self.from else {
            bail!("from is missing: the sender's address, e.g. \"failover@example.com\"");
        };
        from.parse::<lettre::message::Mailbox>()
            .map_err(|e| anyhow::anyhow!("from {from:?} is not a mail address: {e}"))?;
        if self.to.is_empty() {
            bail!("to is missing: the list of recipients, e.g. [\"oncall@example.com\"]");
        }
        for to in &self.to {
            to.parse::<lettre::message::Mailbox>()
                .map_err(|e| anyhow::anyhow!("to {to:?} is not a mail address: {e}"))?;
        }
        if self.username.is_some() != self.password_file.is_some() {
            bail!("username and password_file go together: give both, or neither");
        }
        if self.username.is_some() && self.tls == Some(SmtpTls::None) {
            bail!(
                "username with tls = \"none\" would send the password in the clear: use \"starttls\" or \"tls\""
            );
        }
        if let Some(file) = &self.password_file {
            read_password(file)?;
        }
        Ok(())
    }

    /// The port to connect to.
    pub(crate) fn smtp_port(&self) -> u16 {
        self.port.unwrap_or(match self.smtp_tls() {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    pub(crate) fn smtp_tls(&self) -> SmtpTls {
        self.tls.unwrap_or(SmtpTls::Starttls)
    }
}

/// The password: the file's first line.
pub(crate) fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("password_file {}", file.display()))?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        bail!("password_file {} is empty", file.display());
    }
    Ok(password)
}

/// Checks every sink, and that no two share a name (they would share a
/// cursor).
pub(crate) fn validate_all(sinks: &[NotifyConfig]) -> anyhow::Result<()> {
    if sinks.len() > MAX_SINKS {
        bail!("[[notify]]: at most {MAX_SINKS} sinks, got {}", sinks.len());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        let which = format!("[[notify]] #{} ({})", i + 1, sink.kind.as_str());
        sink.validate().with_context(|| which.clone())?;
        if !names.insert(sink.name()) {
            bail!(
                "{which}: name {:?} is used by another sink; give each its own name",
                sink.name()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<NotifyConfig>> {
        #[derive(Deserialize)]
        struct File {
            notify: Vec<NotifyConfig>,
        }
        let file: File = toml::from_str(text)?;
        validate_all(&file.notify)?;
        Ok(file.notify)
    }

    #[test]
    fn each_kind_needs_its_keys_and_refuses_the_others() {
        let ok = parse(
            r#"
            [[notify]]
            kind = "webhook"
            url = "https://hooks.example.com/failover"
            secret = "0123456789abcdef"
            events = ["promoted", "alarm"]
            [[notify]]
            kind = "smtp"
            host = "smtp.example.com"
            from = "failover@example.com"
            to = ["oncall@example.com"]
            [[notify]]
            kind = "exec"
            command = ["/bin/true"]
            groups = ["db"]
            "#,
        )
        .expect("valid");
        assert_eq!(ok[1].smtp_port(), 587);
        assert!(ok[0].wants(EventKind::Promoted, "any"));
        assert!(!ok[0].wants(EventKind::MemberAdded, "any"));
        assert!(ok[2].wants(EventKind::MemberAdded, "db"));
        assert!(!ok[2].wants(EventKind::MemberAdded, "web"));

        let cases = [
            (
                "kind = \"webhook\"\nsecret = \"0123456789abcdef\"",
                "url is missing",
            ),
            (
                "kind = \"webhook\"\nurl = \"ftp://x/\"\nsecret = \"0123456789abcdef\"",
                "http://HOST/PATH",
            ),
            (
                "kind = \"webhook\"\nurl = \"http://x/\"\nsecret = \"0123456789abcdef\"\nto = [\"a@b.c\"]",
                "to is not a key of webhook sinks",
            ),
            (
                "kind = \"smtp\"\nhost = \"h\"\nto = [\"a@b.c\"]",
                "from is missing",
            ),
            (
                "kind = \"smtp\"\nhost = \"h\"\nfrom = \"not an address\"\nto = [\"a@b.c\"]",
                "from \"not an address\"",
            ),
            (
                "kind = \"exec\"\ncommand = [\"/bin/true\"]\nevents = [\"promotd\"]",
                "\"promotd\" is not an event kind",
            ),
            ("kind = \"exec\"", "command is missing"),
            ("kind = \"pager\"", "unknown variant `pager`"),
            (
                "kind = \"exec\"\ncommand = [\"x\"]\nurll = \"y\"",
                "unknown field `urll`",
            ),
        ];
        for (sink, expected) in cases {
            let err = parse(&format!("[[notify]]\n{sink}\n")).expect_err(sink);
            let text = format!("{err:#}");
            assert!(text.contains(expected), "{sink}: {text}");
        }
    }

    #[test]
    fn default_names_follow_the_destination_not_the_order() {
        let a = parse(
            "[[notify]]\nkind = \"exec\"\ncommand = [\"/a\"]\n[[notify]]\nkind = \"exec\"\ncommand = [\"/b\"]\n",
        )
        .expect("valid");
        let b = parse(
            "[[notify]]\nkind = \"exec\"\ncommand = [\"/b\"]\n[[notify]]\nkind = \"exec\"\ncommand = [\"/a\"]\n",
        )
        .expect("valid");
        assert_eq!(a[0].name(), b[1].name());
        assert_ne!(a[0].name(), a[1].name());
        let twice = parse(
            "[[notify]]\nkind = \"exec\"\ncommand = [\"/a\"]\n[[notify]]\nkind = \"exec\"\ncommand = [\"/a\"]\n",
        )
        .expect_err("same sink twice");
        assert!(format!("{twice:#}").contains("is used by another sink"));
    }
}
