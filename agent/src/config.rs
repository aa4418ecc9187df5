//! The agent's configuration: command-line flags over a TOML file, resolved
//! once into a checked [`AgentConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::checks::CheckConfig;
use crate::sync::SyncConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "failover-agent",
    version,
    about = "Reports this node to the failover coordinator and runs its hooks"
)]
pub struct Args {
    /// TOML configuration file (see deploy/agent.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (overrides node_id in the file).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Coordinator URL; for several coordinator replicas repeat it or
    /// separate them with commas (overrides the file)
    /// [default: http://127.0.0.1:7400].
    #[arg(long = "coordinator", value_name = "URL", value_delimiter = ',')]
    pub coordinators: Vec<String>,
    /// TLS: the CA that signed the coordinator's certificate (PEM), for
    /// https:// coordinator URLs.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: this node's certificate (PEM), naming it as urn:failover:node:NODE.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the node certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Print this manual page (roff) and exit:
    /// `failover-agent --man-page > failover-agent.1`.
    #[arg(long)]
    pub man_page: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One URL or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    coordinator: Option<OneOrMany>,
    role_log: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    hooks: HooksConfig,
    #[serde(default)]
    checks: Vec<CheckConfig>,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    log: LogConfig,
    peer_listen: Option<String>,
    peer_advertise: Option<String>,
    #[serde(default)]
    sync: Vec<SyncConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsConfig {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Command run (through `sh -c`) on every role change.
    pub on_role_change: Option<String>,
    /// A hook still running after this long is killed and reported failed.
    #[serde(with = "proto::duration::serde")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            on_role_change: None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter; the RUST_LOG environment variable wins over it.
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

/// The agent's resolved, checked configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub coordinators: Vec<String>,
    /// Append every role transition of this node here (JSON lines).
    pub role_log: Option<PathBuf>,
    /// Where the agent keeps its installation UUID (`node-uuid`).
    pub state_dir: PathBuf,
    pub hooks: HooksConfig,
    /// Health checks, each validated.
    pub checks: Vec<CheckConfig>,
    /// TLS files for https:// coordinators.
    pub tls: proto::client::ClientTls,
    pub log: LogConfig,
    /// Where the peer service listens (for `[[sync]]`).
    pub peer_listen: String,
    /// What other agents connect to instead of the local address (NAT).
    pub peer_advertise: Option<String>,
    /// State syncs, each validated.
    pub syncs: Vec<SyncConfig>,
    /// How it was made (flags over `--config`), to make it again on SIGHUP.
    pub source: Args,
}

/// Longest hook timeout accepted.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);

impl AgentConfig {
    pub fn load(args: &Args) -> anyhow::Result<AgentConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_id = args
            .node_id
            .clone()
            .or(file.node_id)
            .context("node_id is missing: set node_id in the config file or pass --node-id")?;
        proto::names::validate_node_id(&node_id)?;
        let coordinators = if !args.coordinators.is_empty() {
            args.coordinators.clone()
        } else {
            match file.coordinator {
                Some(OneOrMany::One(url)) => vec![url],
                Some(OneOrMany::Many(urls)) => urls,
                None => vec!["http://127.0.0.1:7400".into()],
            }
        };
        if coordinators.is_empty() {
            bail!("coordinator is an empty list: give at least one URL");
        }
        for url in &coordinators {
            check_url(url)?;
        }
        let hooks = file.hooks;
        if hooks.timeout.is_zero() || hooks.timeout > MAX_HOOK_TIMEOUT {
            bail!(
                "hooks.timeout must be between 1ms and {}, got {}",
                humantime::format_duration(MAX_HOOK_TIMEOUT),
                humantime::format_duration(hooks.timeout)
            );
        }
        if hooks
            .on_role_change
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            bail!("hooks.on_role_change is empty: remove it or give a command");
        }
        for (i, check) in file.checks.iter().enumerate() {
            check.validate()?;
            if file.checks[..i].iter().any(|c| c.name == check.name) {
                bail!(
                    "two checks are named {:?}: names must be unique",
                    check.name
                );
            }
        }
        let mut log = file.log;
        if let Some(format) = args.log_format {
            log.format = format;
        }
        let state_dir = file
            .state_dir
            .or_else(systemd_state_directory)
            .or_else(|| {
                args.config
                    .as_deref()
                    .and_then(Path::parent)
                    .map(|p| {
                        if p.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            p
                        }
                    })
                    .map(Path::to_owned)
            })
            .unwrap_or_else(|| PathBuf::from("."));
        let tls = proto::client::ClientTls {
            ca: args.tls_ca.clone().or(file.tls.ca),
            cert: args.tls_cert.clone().or(file.tls.cert),
            key: args.tls_key.clone().or(file.tls.key),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            bail!("tls.cert and tls.key go together: give both or neither");
        }
        let any_tls = tls.ca.is_some() || tls.cert.is_some();
        if let Some(plain) = coordinators.iter().find(|u| !u.starts_with("https://"))
            && any_tls
        {
            bail!(
                "[tls] is set but coordinator {plain} is not https://: every coordinator URL must \
                 be https:// (a plaintext one would carry this node's identity in the clear)"
            );
        }
        for url in &coordinators {
            if url.starts_with("https://") && tls.ca.is_none() {
                bail!(
                    "coordinator {url} is https://: set tls.ca (or --tls-ca) to the CA that signed \
                     its certificate"
                );
            }
        }
        if file.sync.len() > crate::sync::config::MAX_SYNCS {
            bail!(
                "{} [[sync]] sections: at most {} are allowed",
                file.sync.len(),
                crate::sync::config::MAX_SYNCS
            );
        }
        for (i, sync) in file.sync.iter().enumerate() {
            sync.validate()?;
            if file.sync[..i].iter().any(|s| s.name == sync.name) {
                bail!(
                    "two [[sync]] sections are named {:?}: names must be unique",
                    sync.name
                );
            }
            if let Some(other) = file.sync[..i].iter().find(|s| s.path == sync.path) {
                bail!(
                    "[[sync]] {:?} and {:?} both sync {}: one path, one sync",
                    other.name,
                    sync.name,
                    sync.path.display()
                );
            }
        }
        // A sync must not carry the agent's own state or configuration to
        // other nodes, nor hold another sync.
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        let own = [
            ("state_dir", Some(absolute(&state_dir))),
            (
                "the configuration file",
                args.config.as_deref().map(absolute),
            ),
        ];
        for sync in &file.sync {
            for (what, path) in &own {
                if let Some(path) = path
                    && path.starts_with(&sync.path)
                {
                    bail!(
                        "[[sync]] {:?}: path {} holds {what} ({}): it would carry this \
                         agent's own files to other nodes",
                        sync.name,
                        sync.path.display(),
                        path.display()
                    );
                }
            }
            if let Some(outer) = file
                .sync
                .iter()
                .find(|o| o.name != sync.name && sync.path.starts_with(&o.path))
            {
                bail!(
                    "[[sync]] {:?}: path {} is inside [[sync]] {:?} ({}): syncs must not nest",
                    sync.name,
                    sync.path.display(),
                    outer.name,
                    outer.path.display()
                );
            }
        }
        let peer_listen = file.peer_listen.unwrap_or_else(|| "0.0.0.0:0".into());
        if peer_listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "peer_listen {peer_listen:?} must be an IP address and a port, e.g. \"0.0.0.0:7600\" \
                 (port 0: any free port)"
            );
        }
        if let Some(advertise) = &file.peer_advertise {
            let ok = advertise.len() <= 255
                && advertise.bytes().all(|b| b.is_ascii_graphic())
                && advertise.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if !ok {
                bail!(
                    "peer_advertise {advertise:?} must be HOST:PORT, the address other agents \
                     reach this one's peer service at"
                );
            }
        }
        Ok(AgentConfig {
            peer_listen,
            peer_advertise: file.peer_advertise,
            syncs: file.sync,
            node_id,
            coordinators,
            role_log: file.role_log,
            state_dir,
            tls,
            hooks,
            checks: file.checks,
            log,
            source: args.clone(),
        })
    }
}

impl AgentConfig {
    /// The effective configuration, in the config file's own form, for
    /// `--check-config`.
    pub fn describe(&self) -> String {
        let path = |p: &Path| format!("{:?}", p.display().to_string());
        let mut text = format!(
            "node_id = {:?}\ncoordinator = {:?}\nstate_dir = {}\n",
            self.node_id,
            self.coordinators,
            path(&self.state_dir)
        );
        if let Some(log) = &self.role_log {
            text.push_str(&format!("role_log = {}\n", path(log)));
        }
        if !self.syncs.is_empty() {
            text.push_str(&format!("peer_listen = {:?}\n", self.peer_listen));
            if let Some(advertise) = &self.peer_advertise {
                text.push_str(&format!("peer_advertise = {advertise:?}\n"));
            }
        }
        text.push_str("\n[hooks]\n");
        if let Some(hook) = &self.hooks.on_role_change {
            text.push_str(&format!("on_role_change = {hook:?}\n"));
        }
        text.push_str(&format!(
            "timeout = \"{}\"\n",
            humantime::format_duration(self.hooks.timeout)
        ));
        let tls = [
            ("ca", &self.tls.ca),
            ("cert", &self.tls.cert),
            ("key", &self.tls.key),
        ];
        if tls.iter().any(|(_, p)| p.is_some()) {
            text.push_str("\n[tls]\n");
            for (key, file) in tls {
                if let Some(file) = file {
                    text.push_str(&format!("{key} = {}\n", path(file)));
                }
            }
        }
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        text.push_str(&format!(
            "\n[log]\nformat = \"{format}\"\nlevel = {:?}\n",
            self.log.level
        ));
        for check in &self.checks {
            text.push_str(&format!("\n[[checks]]\nname = {:?}\n", check.name));
            for (key, value) in [
                ("exec", &check.exec),
                ("tcp", &check.tcp),
                ("http", &check.http),
            ] {
                if let Some(value) = value {
                    text.push_str(&format!("{key} = {value:?}\n"));
                }
            }
            text.push_str(&format!(
                "interval = \"{}\"\ntimeout = \"{}\"\nrise = {}\nfall = {}\ngroups = {:?}\n",
                humantime::format_duration(check.interval),
                humantime::format_duration(check.timeout),
                check.rise,
                check.fall,
                check.groups
            ));
        }
        for sync in &self.syncs {
            text.push_str(&format!(
                "\n[[sync]]\nname = {:?}\ngroups = {:?}\npath = {}\ninterval = \"{}\"\n",
                sync.name,
                sync.groups,
                path(&sync.path),
                humantime::format_duration(sync.interval)
            ));
            if let Some(rate) = &sync.max_rate {
                text.push_str(&format!("max_rate = {rate:?}\n"));
            }
            text.push_str(&format!("exclude = {:?}\n", sync.exclude));
        }
        text
    }

    /// What `--check-config` finds wrong with the files the configuration
    /// names: a hook that is missing or not executable, a role log whose
    /// directory is missing, a state directory that does not exist.
    pub fn check_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(command) = &self.hooks.on_role_change
            && let Some(program) = command.split_whitespace().next()
        {
            // `/bin/sh -c` runs the hook: a bare name is looked up in PATH.
            let found = if program.contains('/') {
                Some(PathBuf::from(program))
            } else {
                in_path(program)
            };
            match found {
                None => problems.push(format!(
                    "hooks.on_role_change: {program} is not found in PATH (give the hook's \
                     absolute path)"
                )),
                Some(path) => match std::fs::metadata(&path) {
                    Err(e) => problems.push(format!(
                        "hooks.on_role_change: {} cannot be used: {e}",
                        path.display()
                    )),
                    Ok(m) if !m.is_file() => problems.push(format!(
                        "hooks.on_role_change: {} is not a file",
                        path.display()
                    )),
                    Ok(m) if !is_executable(&m) => problems.push(format!(
                        "hooks.on_role_change: {} is not executable (chmod +x it)",
                        path.display()
                    )),
                    Ok(_) => {}
                },
            }
        }
        if let Some(log) = &self.role_log {
            let dir = log
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                problems.push(format!(
                    "role_log: the directory {} does not exist",
                    dir.display()
                ));
            }
        }
        if !self.state_dir.is_dir() {
            problems.push(format!(
                "state_dir: {} is not a directory",
                self.state_dir.display()
            ));
        }
        for sync in &self.syncs {
            if let Err(problem) = sync.check_path() {
                problems.push(problem);
            }
        }
        problems.extend(proto::client::check_files(
            &self.tls,
            Some(&proto::identity::Named::Node(self.node_id.clone())),
        ));
        problems
    }
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// The state directory systemd made for the unit (`StateDirectory=`).
fn systemd_state_directory() -> Option<PathBuf> {
    let dirs = std::env::var_os("STATE_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next()?;
    (!first.is_empty()).then(|| PathBuf::from(first))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    proto::toml_error::parse(&text)
        .map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = url
        .parse()
        .with_context(|| format!("coordinator URL {url:?} is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(()),
        _ => bail!("coordinator URL {url:?} must look like http://HOST:PORT"),
    }
}

/// The first executable file called `name` in the directories of `PATH`,
/// as the shell would find it.
fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && is_executable(&m))
        })
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;

    fn args(config: Option<PathBuf>) -> Args {
        Args {
            config,
            node_id: None,
            coordinators: vec![],
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            log_format: None,
            check_config: false,
            man_page: false,
        }
    }

    fn load(text: &str) -> anyhow::Result<AgentConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&args(Some(path)))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any file built from the real keys and odd values: no panic, and
        /// a refusal is one short line (plus the file's name).
        #[test]
        fn any_config_file(pairs in proptest::collection::vec((
            proptest::sample::select(vec![
                "node_id", "coordinator", "state_dir", "role_log",
                "[hooks]\ntimeout", "[hooks]\non_role_change",
                "[[checks]]\nname = \"c\"\nkind = \"tcp\"\ninterval",
                "[tls]\nca", "[log]\nformat",
            ]),
            proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                "\"[0-9a-z .:/-]{0,30}\"",
                proptest::strategy::Just("\"18446744073709611s 616ms\"".to_owned()),
                proptest::strategy::Just("\"500us\"".to_owned()),
                proptest::strategy::Just("[\"http://a:1\", \"https://b:2\"]".to_owned()),
                ".{0,20}",
            ],
        ), 0..6)) {
            let text: String = pairs.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            if let Err(e) = load(&text) {
                let line = format!("{e:#}");
                proptest::prop_assert!(!line.contains('\n') || line.contains("TOML parse error"), "{line}");
            }
        }
    }

    #[test]
    fn a_full_file_reads() {
        let c = load(
            "node_id = \"rec-1\"\ncoordinator = [\"http://a:7400\", \"http://b:7400\"]\n\
             [hooks]\non_role_change = \"/bin/true\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.node_id, "rec-1");
        assert_eq!(c.coordinators.len(), 2);
        assert_eq!(c.hooks.timeout, Duration::from_secs(5));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "node_id = \"rec-1\"\ncoordinator = \"http://a:7400\"\n",
        )
        .unwrap();
        let mut a = args(Some(path));
        a.node_id = Some("rec-2".into());
        a.coordinators = vec!["http://b:7400".into()];
        let c = AgentConfig::load(&a).unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.coordinators[0].as_str()),
            ("rec-2", "http://b:7400")
        );
    }

    #[test]
    fn mistakes_are_clear_errors() {
        for (text, expect) in [
            ("node_id = \"rec-1\"\nhookz = 1\n", "hookz"),
            ("coordinator = \"http://a:1\"\n", "node_id is missing"),
            ("node_id = \"Rec 1\"\n", "not allowed"),
            (
                "node_id = \"rec-1\"\ncoordinator = \"a:1\"\n",
                "http://HOST:PORT",
            ),
            (
                "node_id = \"rec-1\"\n[hooks]\ntimeout = \"0s\"\n",
                "hooks.timeout",
            ),
            (
                "node_id = \"rec-1\"\n[hooks]\ntimeout = \"-1s\"\n",
                "invalid",
            ),
        ] {
            let err = format!("{:#}", load(text).unwrap_err());
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }
}
