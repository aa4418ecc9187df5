//! The configuration file, re-read on SIGHUP: the notification sinks,
//! `[defaults]` (for groups created from now on) and `[log] level` change
//! while the coordinator runs, without touching a session. A file that
//! does not load, or a sink that cannot be built, is refused whole with
//! the reason logged, and the running configuration stays. Other keys take
//! effect at the next start (the log says which changed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::config::Config;
use crate::engine::Input;
use crate::leadership::Leadership;
use crate::notify::{Notifier, Sinks};
use crate::policy::Policy;

pub(crate) struct ConfigReload {
    path: PathBuf,
    running: Mutex<Config>,
    notifier: Arc<Notifier>,
    leadership: Leadership,
    /// The defaults a runtime starts with (a replica elected later).
    defaults: watch::Sender<Policy>,
}

impl ConfigReload {
    pub(crate) fn new(
        path: PathBuf,
        running: Config,
        notifier: Arc<Notifier>,
        leadership: Leadership,
        defaults: watch::Sender<Policy>,
    ) -> ConfigReload {
        ConfigReload {
            path,
            running: Mutex::new(running),
            notifier,
            leadership,
            defaults,
        }
    }

    /// The file's new configuration (with the command line's flags over
    /// it, as at the start) and its sinks, each checked.
    fn load(&self) -> anyhow::Result<(Config, Sinks)> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flags
            .clone();
        let new = match &running {
            Some(flags) => Config::load(flags)?,
            None => Config::from_file(&self.path)?,
        };
        new.validate_live()?;
        let sinks = Sinks::build(&new.notify)?;
        Ok((new, sinks))
    }
}

/// Keys whose change waits for a restart, as the file names them.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut differs = |name: &'static str, a: String, b: String| {
        if a != b {
            changed.push(name);
        }
    };
    differs("listen", old.listen.to_string(), new.listen.to_string());
    differs(
        "http_listen",
        old.http_listen.to_string(),
        new.http_listen.to_string(),
    );
    differs(
        "data_dir",
        old.data_dir.display().to_string(),
        new.data_dir.display().to_string(),
    );
    differs(
        "store",
        format!("{:?}", old.store),
        format!("{:?}", new.store),
    );
    differs(
        "[etcd]",
        format!("{:?}", old.etcd),
        format!("{:?}", new.etcd),
    );
    differs(
        "advertise_url",
        format!("{:?}", old.advertise_url),
        format!("{:?}", new.advertise_url),
    );
    differs(
        "clock_drift",
        old.clock_drift.to_string(),
        new.clock_drift.to_string(),
    );
    differs(
        "event_retention",
        old.event_retention.to_string(),
        new.event_retention.to_string(),
    );
    differs("tls", format!("{:?}", old.tls), format!("{:?}", new.tls));
    differs(
        "[auth]",
        format!("{:?}", old.auth),
        format!("{:?}", new.auth),
    );
    differs(
        "[limits]",
        format!("{:?}", old.limits),
        format!("{:?}", new.limits),
    );
    differs(
        "[log] format",
        format!("{:?}", old.log.format),
        format!("{:?}", new.log.format),
    );
    changed
}

impl crate::reload::Reload for ConfigReload {
    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    /// Only on SIGHUP: an editor's half-written file is never taken.
    fn on_change(&self) -> bool {
        false
    }

    fn reload(&self, why: &str) {
        let (new, sinks) = match self.load() {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(
                    file = %self.path.display(),
                    "configuration not reloaded ({why}), the running one stays: {}",
                    format!("{e:#}").replace('\n', " ")
                );
                return;
            }
        };
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut applied = Vec::new();
        if let Err(e) = proto::logging::set_level(&new.log.level) {
            tracing::error!("configuration not reloaded ({why}), the running one stays: {e}");
            return;
        }
        if new.log.level != running.log.level {
            applied.push("[log] level");
        }
        if format!("{:?}", new.notify) != format!("{:?}", running.notify) {
            self.notifier.replace(sinks);
            applied.push("[[notify]]");
        }
        if format!("{:?}", new.defaults) != format!("{:?}", running.defaults) {
            let policy = new.defaults.clone();
            self.defaults.send_replace(policy.clone());
            if let Ok(handle) = self.leadership.handle() {
                tokio::spawn(async move { handle.input(Input::Defaults { policy }).await });
            }
            applied.push("[defaults]");
        }
        let waiting = needs_restart(&running, &new);
        if !waiting.is_empty() {
            tracing::warn!(
                keys = ?waiting,
                "changed in the configuration file, but they take effect only at the next start"
            );
        }
        tracing::info!(file = %self.path.display(), changed = ?applied, sinks = ?self.notifier.names(), "configuration reloaded ({why})");
        running.notify = new.notify;
        running.defaults = new.defaults;
        running.log.level = new.log.level;
    }
}
