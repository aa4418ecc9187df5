//! The coordinator's configuration: command-line flags over a TOML file
//! over defaults, resolved once into a checked [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::policy::Policy;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "failover-coordinator",
    version,
    about = "Keeps failover groups and promotes their primaries"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    /// TOML configuration file (see deploy/coordinator.example.toml).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// gRPC listen address for agents and operators [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTP listen address for /healthz, /readyz and /metrics [default: 127.0.0.1:7401].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./failover-data].
    #[arg(global = true, long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TLS: this coordinator's certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA that signs agents' and operators' certificates (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Where groups are kept: the embedded store (one coordinator), or an
    /// etcd cluster shared by coordinator replicas [default: sled].
    #[arg(global = true, long, value_enum)]
    pub store: Option<StoreKind>,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(global = true, long, value_name = "URL,...", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd, so clusters can share one etcd
    /// [default: /failover/].
    #[arg(global = true, long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// TLS to etcd: the CA that signed etcd's certificates (PEM).
    #[arg(global = true, long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// TLS to etcd: this coordinator's client certificate (PEM); with
    /// --etcd-key.
    #[arg(global = true, long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// TLS to etcd: the client certificate's key (PEM).
    #[arg(global = true, long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The URL agents and operators reach this replica by, given to them
    /// by the other replicas [default: from --listen].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Operators' bearer tokens, hashed (TOML; see README "Security").
    #[arg(long, value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Print this manual page (roff) and exit:
    /// `failover-coordinator --man-page > failover-coordinator.1`.
    #[arg(long)]
    pub man_page: bool,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Write every group (members, settings, epoch, primary) and every
    /// deleted group's epoch floor from the configured store as JSON: a
    /// backup, or the way to another store. The embedded store must not be
    /// in use (stop its coordinator first); etcd may be.
    Export {
        /// Write here (created private) instead of to stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write an export into the configured store, which must hold no
    /// group. Then start (or restart) the coordinators on it.
    Import {
        /// The export (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store in `data_dir`: one coordinator.
    #[default]
    Sled,
    /// An etcd cluster: any number of coordinator replicas, one leads.
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    /// `[etcd]`: the cluster, with `store = "etcd"`.
    pub etcd: EtcdConfig,
    /// The URL other replicas send agents and operators to when this one
    /// leads; `None`: made from `listen`.
    pub advertise_url: Option<String>,
    /// Bound on agent clock rate drift (`rho`); leases are waited out for
    /// `ttl * (1 + clock_drift)`.
    pub clock_drift: f64,
    /// How many events the log keeps.
    pub event_retention: u64,
    /// Settings of new groups where `group add` gives none.
    pub defaults: Policy,
    /// `[tls]` files, or `tls = "off"` to serve plaintext on purpose.
    pub tls: Option<Tls>,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    /// `[[notify]]`: where operators are told of events.
    pub notify: Vec<crate::notify::config::NotifyConfig>,
    /// The file this was read from (`--config`), re-read on SIGHUP.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The command line it was made with: a reload applies its flags over
    /// the file again, as the start did.
    #[serde(skip)]
    pub flags: Option<Args>,
}

/// `[etcd]`: the etcd cluster coordinator replicas share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Prefix of every key, e.g. `/failover/`.
    pub prefix: String,
    /// TLS to etcd: the CA, and this coordinator's client certificate.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The leader's etcd lease: how long a leader that stopped renewing it
    /// (killed, cut off) keeps others from leading. Whole seconds, at
    /// least 2.
    #[serde(with = "proto::duration::serde")]
    pub leader_lease: std::time::Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: "/failover/".into(),
            ca: None,
            cert: None,
            key: None,
            leader_lease: std::time::Duration::from_secs(2),
        }
    }
}

/// `[limits]`: how much of the coordinator any set of clients can hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open gRPC connections (agents, operators) at most.
    pub max_connections: usize,
    /// Open HTTP connections (probes, metrics) at most.
    pub max_http_connections: usize,
    /// A connection the coordinator reads nothing from for this long is
    /// closed (agents and failoverctl ping every 20 s).
    #[serde(with = "proto::duration::serde")]
    pub idle_timeout: std::time::Duration,
    /// Event watches (`failoverctl events --follow`) open at once.
    pub max_watchers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_http_connections: 256,
            idle_timeout: std::time::Duration::from_secs(60),
            max_watchers: 256,
        }
    }
}

/// TLS for both listeners: a table of files, or the explicit choice of
/// plaintext (`tls = "off"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `tls = "off"`.
    Off,
    /// `[tls] cert = "...", key = "...", client_ca = "..."`.
    Files(TlsFileConfig),
}

impl<'de> Deserialize<'de> for Tls {
    /// Read by hand so a mistake names the key (`ca` for `client_ca`)
    /// instead of "no variant matched".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tls, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) if s == "off" => Ok(Tls::Off),
            toml::Value::String(s) => Err(D::Error::custom(format!(
                "tls = {s:?}: write tls = \"off\" for plaintext, or a [tls] table with cert, key \
                 and client_ca"
            ))),
            table @ toml::Value::Table(_) => TlsFileConfig::deserialize(table)
                .map(Tls::Files)
                .map_err(|e| D::Error::custom(format!("[tls]: {}", e.message()))),
            other => Err(D::Error::custom(format!(
                "tls = {other}: write tls = \"off\", or a [tls] table with cert, key and client_ca"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The file of operators' hashed bearer tokens.
    pub tokens: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,coordinator=debug`; the
    /// RUST_LOG environment variable wins over it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7400)),
            http_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7401)),
            data_dir: PathBuf::from("./failover-data"),
            store: StoreKind::Sled,
            etcd: EtcdConfig::default(),
            advertise_url: None,
            clock_drift: 0.01,
            event_retention: 10_000,
            defaults: Policy::default(),
            tls: None,
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            notify: Vec::new(),
            source: None,
            flags: None,
        }
    }
}

impl Config {
    /// Reads the file named by `--config` (if any), applies the flags on
    /// top, and checks the result.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.source = args.config.clone();
        config.flags = Some(args.clone());
        if let Some(v) = args.listen {
            config.listen = v;
        }
        if let Some(v) = args.http_listen {
            config.http_listen = v;
        }
        if let Some(v) = &args.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = args.log_format {
            config.log.format = v;
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            config.tls = Some(Tls::Files(TlsFileConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }));
        }
        if let Some(v) = &args.auth_tokens {
            config.auth.tokens = Some(v.clone());
        }
        if let Some(v) = args.store {
            config.store = v;
        }
        if !args.etcd_endpoints.is_empty() {
            config.etcd.endpoints = args.etcd_endpoints.clone();
        }
        if let Some(v) = &args.etcd_prefix {
            config.etcd.prefix = v.clone();
        }
        if let Some(v) = &args.etcd_ca {
            config.etcd.ca = Some(v.clone());
        }
        if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
            config.etcd.cert = Some(cert.clone());
            config.etcd.key = Some(key.clone());
        }
        if let Some(v) = &args.advertise_url {
            config.advertise_url = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// The URL other replicas send clients to when this one leads.
    pub(crate) fn advertised(&self, listening: std::net::SocketAddr) -> String {
        if let Some(url) = &self.advertise_url {
            return url.clone();
        }
        let scheme = if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{listening}")
    }

    /// The TLS files, when TLS is on.
    pub(crate) fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match &self.tls {
            Some(Tls::Files(f)) => Some(crate::tls::TlsFiles {
                cert: f.cert.clone(),
                key: f.key.clone(),
                client_ca: f.client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// The effective configuration, in the config file's own form, for
    /// `--check-config`.
    pub fn describe(&self) -> String {
        let path = |p: &Path| format!("{:?}", p.display().to_string());
        let mut text = format!(
            "listen = \"{}\"\nhttp_listen = \"{}\"\ndata_dir = {}\nclock_drift = {}\n\
             event_retention = {}\nstore = \"{}\"\n",
            self.listen,
            self.http_listen,
            path(&self.data_dir),
            self.clock_drift,
            self.event_retention,
            match self.store {
                StoreKind::Sled => "sled",
                StoreKind::Etcd => "etcd",
            }
        );
        match &self.advertise_url {
            Some(url) => text.push_str(&format!("advertise_url = {url:?}\n")),
            None if self.store == StoreKind::Etcd => text.push_str(&format!(
                "# advertised to clients: {}\n",
                self.advertised(self.listen)
            )),
            None => {}
        }
        match &self.tls {
            None => text.push_str("# no [tls]: plaintext (loopback only)\n"),
            Some(Tls::Off) => text.push_str("tls = \"off\"\n"),
            Some(Tls::Files(f)) => {
                text.push_str(&format!(
                    "\n[tls]\ncert = {}\nkey = {}\n",
                    path(&f.cert),
                    path(&f.key)
                ));
                if let Some(ca) = &f.client_ca {
                    text.push_str(&format!("client_ca = {}\n", path(ca)));
                }
            }
        }
        if let Some(tokens) = &self.auth.tokens {
            text.push_str(&format!("\n[auth]\ntokens = {}\n", path(tokens)));
        }
        if self.store == StoreKind::Etcd {
            let e = &self.etcd;
            text.push_str(&format!(
                "\n[etcd]\nendpoints = {:?}\nprefix = {:?}\nleader_lease = \"{}\"\n",
                e.endpoints,
                e.prefix,
                humantime::format_duration(e.leader_lease)
            ));
            for (name, file) in [("ca", &e.ca), ("cert", &e.cert), ("key", &e.key)] {
                if let Some(file) = file {
                    text.push_str(&format!("{name} = {}\n", path(file)));
                }
            }
        }
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        text.push_str(&format!(
            "\n[log]\nformat = \"{format}\"\nlevel = {:?}\n\n[defaults]\n",
            self.log.level
        ));
        text.push_str(&toml::to_string(&self.defaults).unwrap_or_default());
        text.push_str(&format!(
            "\n[limits]\nmax_connections = {}\nmax_http_connections = {}\nidle_timeout = \"{}\"\nmax_watchers = {}\n",
            self.limits.max_connections,
            self.limits.max_http_connections,
            humantime::format_duration(self.limits.idle_timeout),
            self.limits.max_watchers
        ));
        for sink in &self.notify {
            text.push_str(&sink.describe());
        }
        text
    }

    fn validate_etcd(&self) -> anyhow::Result<()> {
        let e = &self.etcd;
        if self.store == StoreKind::Sled {
            if !e.endpoints.is_empty() {
                bail!(
                    "etcd endpoints are given but the store is sled: add --store etcd (store = \"etcd\")"
                );
            }
            return Ok(());
        }
        if e.endpoints.is_empty() {
            bail!("--store etcd needs --etcd-endpoints URL,... ([etcd] endpoints)");
        }
        for url in &e.endpoints {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!(
                    "etcd endpoint {url:?}: write it as a URL, http://HOST:2379 or https://HOST:2379"
                );
            }
            if url.starts_with("https://") && e.ca.is_none() {
                bail!(
                    "etcd endpoint {url} is https:// but no CA is given: --etcd-ca FILE ([etcd] ca)"
                );
            }
        }
        if e.cert.is_some() != e.key.is_some() {
            bail!("[etcd] cert and key go together");
        }
        if (e.ca.is_some() || e.cert.is_some())
            && e.endpoints.iter().any(|u| u.starts_with("http://"))
        {
            bail!(
                "etcd TLS files are given but an endpoint is http://: write the endpoints as https://"
            );
        }
        if self.advertise_url.is_none() && self.listen.ip().is_unspecified() {
            bail!(
                "listen = {} with store = etcd: give advertise_url (--advertise-url), the URL other \
                 replicas send agents and operators to",
                self.listen
            );
        }
        if !e.prefix.starts_with('/') || !e.prefix.ends_with('/') || e.prefix.len() > 128 {
            bail!(
                "etcd prefix {:?}: start and end it with '/', e.g. /failover/ (at most 128 characters)",
                e.prefix
            );
        }
        let lease = e.leader_lease;
        if lease.subsec_nanos() != 0 || !(2..=60).contains(&lease.as_secs()) {
            bail!(
                "[etcd] leader_lease must be whole seconds between 2s and 60s, got {}",
                humantime::format_duration(lease)
            );
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!(
                "advertise_url {url:?}: write it as a URL agents can reach, e.g. https://coordinator-0.example:7400"
            );
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        proto::toml_error::parse(&text)
            .map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))
    }

    /// Checks what a reload may change: `[defaults]`, `[[notify]]`, the
    /// log level.
    pub(crate) fn validate_live(&self) -> anyhow::Result<()> {
        self.defaults
            .validate()
            .context("invalid [defaults] in the configuration")?;
        crate::notify::config::validate_all(&self.notify)?;
        proto::logging::check_level(&self.log.level).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=0.5).contains(&self.clock_drift) {
            bail!(
                "clock_drift must be between 0 and 0.5, got {}",
                self.clock_drift
            );
        }
        if self.event_retention == 0 {
            bail!("event_retention must be at least 1");
        }
        self.validate_etcd()?;
        crate::notify::config::validate_all(&self.notify)?;
        self.defaults
            .validate()
            .context("invalid [defaults] in the configuration")?;
        let limits = &self.limits;
        if !(1..=1_000_000).contains(&limits.max_connections) {
            bail!(
                "[limits] max_connections must be between 1 and 1000000, got {}",
                limits.max_connections
            );
        }
        if !(1..=100_000).contains(&limits.max_http_connections) {
            bail!(
                "[limits] max_http_connections must be between 1 and 100000, got {}",
                limits.max_http_connections
            );
        }
        if !(1..=100_000).contains(&limits.max_watchers) {
            bail!(
                "[limits] max_watchers must be between 1 and 100000, got {}",
                limits.max_watchers
            );
        }
        // Clients ping every 20 s; a shorter idle timeout would cut them.
        if !(std::time::Duration::from_secs(30)..=std::time::Duration::from_secs(86_400))
            .contains(&limits.idle_timeout)
        {
            bail!(
                "[limits] idle_timeout must be between 30s and 1day, got {}",
                humantime::format_duration(limits.idle_timeout)
            );
        }
        // Beyond this machine, either protection (TLS with a client CA, so
        // every agent proves its node) or the explicit choice of none.
        let exposed = [self.listen, self.http_listen]
            .into_iter()
            .find(|addr| !addr.ip().is_loopback());
        match (&self.tls, exposed) {
            (None, Some(addr)) => bail!(
                "refusing to serve plaintext on {addr}: configure TLS ([tls] cert, key, client_ca, \
                 or --tls-cert/--tls-key/--tls-client-ca), or set tls = \"off\" in the config to \
                 serve plaintext on purpose"
            ),
            (Some(Tls::Files(files)), Some(addr)) if files.client_ca.is_none() => bail!(
                "refusing to serve on {addr} without a client CA: anyone could act as any node \
                 (and as an admin without tokens); set [tls] client_ca (--tls-client-ca), or set \
                 tls = \"off\" to run unprotected on purpose"
            ),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_typo_in_the_file_is_an_error_that_names_the_key() {
        let err = toml::from_str::<Config>("listn = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn durations_read_like_500ms() {
        let c: Config = toml::from_str(
            "[defaults]\nheartbeat_interval = \"100ms\"\nfailover_timeout = \"300ms\"",
        )
        .unwrap();
        assert_eq!(c.defaults.heartbeat_interval, Duration::from_millis(100));
        c.validate().unwrap();
    }

    #[test]
    fn replica_settings_that_cannot_work_are_refused_with_the_reason() {
        let refused = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let etcd = "store = \"etcd\"\n";
        assert!(refused(etcd).contains("--etcd-endpoints"));
        let wildcard = format!(
            "listen = \"0.0.0.0:7400\"\ntls = \"off\"\n{etcd}[etcd]\nendpoints = [\"http://e:2379\"]\n"
        );
        assert!(refused(&wildcard).contains("advertise_url"));
        let mixed = format!("{etcd}[etcd]\nendpoints = [\"http://e:2379\"]\nca = \"/ca.pem\"\n");
        assert!(refused(&mixed).contains("https://"));
        let short =
            format!("{etcd}[etcd]\nendpoints = [\"http://e:2379\"]\nleader_lease = \"1s\"\n");
        assert!(refused(&short).contains("leader_lease"));
        let sled_with_etcd = "[etcd]\nendpoints = [\"http://e:2379\"]\n";
        assert!(refused(sled_with_etcd).contains("--store etcd"));
        let fine: Config = toml::from_str(&format!(
            "listen = \"0.0.0.0:7400\"\ntls = \"off\"\nadvertise_url = \"https://c-0:7400\"\n{etcd}\
             [etcd]\nendpoints = [\"https://e:2379\"]\nca = \"/ca.pem\"\n"
        ))
        .unwrap();
        fine.validate().unwrap();
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let c: Config = toml::from_str("[defaults]\nfailover_timeout = \"0s\"").unwrap();
        assert!(c.validate().is_err());
    }
}
