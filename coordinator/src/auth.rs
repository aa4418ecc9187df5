//! Who is calling, and what they may do.
//!
//! Identities come from client certificates (checked against the client CA
//! during the TLS handshake) or from bearer tokens (a file of hashed
//! tokens). A certificate names its holder in a URI subject alternative
//! name (the rule is `proto::identity`):
//!
//! - `urn:failover:node:NODE` — the agent of node `NODE`;
//! - `urn:failover:operator:ROLE:NAME` — operator `NAME` with role `ROLE`.
//!
//! Roles, each including the one before: `viewer` (groups, nodes, events),
//! `operator` (promote, takeover, restore, drain, undrain), `admin`
//! (groups, members, settings). With no client CA and no token file,
//! authentication is off: anyone who reaches the coordinator is an admin
//! (development on loopback only; the coordinator says so loudly).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::reload::Reload;

/// What an operator may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Viewer,
    Operator,
    Admin,
}

impl Access {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Access> {
        match s {
            "viewer" => Some(Access::Viewer),
            "operator" => Some(Access::Operator),
            "admin" => Some(Access::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Actor names events use for others than operators: no operator may
/// have them.
pub(crate) const RESERVED_NAMES: [&str; 2] = [crate::engine::COORDINATOR, "anonymous"];

/// The bearer tokens operators may use, by the SHA-256 of the token.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_digest: HashMap<String, (String, Access)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileText {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Access,
    /// Lowercase hex SHA-256 of the token (the token itself is never
    /// stored).
    sha256: String,
}

impl Tokens {
    /// Reads a token file:
    ///
    /// ```toml
    /// [[token]]
    /// name = "ci"
    /// role = "operator"
    /// sha256 = "…64 hex digits…"
    /// ```
    pub(crate) fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let file: TokenFileText = proto::toml_error::parse(&text)
            .map_err(|e| anyhow::anyhow!("the token file {} is invalid: {e}", path.display()))?;
        // An empty file is far more often a write caught halfway than a
        // wish to lock every operator out.
        if file.token.is_empty() {
            bail!(
                "the token file {} holds no token (to turn tokens off, remove [auth] tokens)",
                path.display()
            );
        }
        let mut tokens = Tokens::default();
        let mut names = std::collections::HashSet::new();
        for entry in file.token {
            if !names.insert(entry.name.clone()) {
                bail!(
                    "token name {} appears twice in {}: give every token its own name",
                    entry.name,
                    path.display()
                );
            }
            proto::names::validate_node_id(&entry.name)
                .with_context(|| format!("token name {:?} in {}", entry.name, path.display()))?;
            if RESERVED_NAMES.contains(&entry.name.as_str()) {
                bail!(
                    "token name {} in {}: reserved (events use it for other actors)",
                    entry.name,
                    path.display()
                );
            }
            let digest = entry.sha256.to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "token {} in {}: sha256 must be 64 hex digits (failoverctl pki token makes one)",
                    entry.name,
                    path.display()
                );
            }
            if tokens
                .by_digest
                .insert(digest, (entry.name.clone(), entry.role))
                .is_some()
            {
                bail!("token {} in {} is listed twice", entry.name, path.display());
            }
        }
        Ok(tokens)
    }

    /// Who `token` belongs to, if anyone.
    pub(crate) fn lookup(&self, token: &str) -> Option<(String, Access)> {
        self.by_digest.get(&sha256_hex(token.as_bytes())).cloned()
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The token file, re-read when it changes or on SIGHUP (`reload.rs`): a
/// token added or revoked takes effect without a restart.
#[derive(Debug)]
pub(crate) struct TokenFile {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl TokenFile {
    /// Loads the file; an error here stops the coordinator from starting.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Arc<TokenFile>> {
        Ok(Arc::new(TokenFile {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Tokens::load(path)?)),
        }))
    }

    fn lookup(&self, token: &str) -> Option<(String, Access)> {
        let tokens = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokens.lookup(token)
    }
}

impl Reload for TokenFile {
    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn reload(&self, why: &str) {
        match Tokens::load(&self.path) {
            Ok(tokens) => {
                let count = tokens.by_digest.len();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
                tracing::info!(why, tokens = count, "token file reloaded");
            }
            Err(e) => tracing::error!(
                why,
                error = format!("{e:#}"),
                "token file not reloaded: keeping the tokens in use"
            ),
        }
    }
}

/// How the coordinator authenticates callers.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    /// A client CA is configured: certificates name agents and operators,
    /// and agents must present one.
    pub(crate) client_certs: bool,
    pub(crate) tokens: Option<Arc<TokenFile>>,
}

impl Auth {
    /// Off: anyone who reaches the coordinator may do anything.
    pub(crate) fn is_off(&self) -> bool {
        !self.client_certs && self.tokens.is_none()
    }

    /// The operator a bearer token belongs to, if any.
    pub(crate) fn token_holder(&self, token: &str) -> Option<(String, Access)> {
        self.tokens.as_ref()?.lookup(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_before() {
        assert!(Access::Admin > Access::Operator && Access::Operator > Access::Viewer);
    }

    #[test]
    fn token_files_hold_hashes_and_refuse_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let digest = sha256_hex(b"s3cret");
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"ci\"\nrole = \"operator\"\nsha256 = \"{digest}\"\n"),
        )
        .unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.lookup("s3cret"),
            Some(("ci".into(), Access::Operator))
        );
        assert_eq!(tokens.lookup("guess"), None);
        std::fs::write(
            &path,
            "[[token]]\nname = \"ci\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        assert!(Tokens::load(&path).is_err());
        for bad in [
            String::new(),
            format!("[[token]]\nname = \"coordinator\"\nrole = \"admin\"\nsha256 = \"{digest}\"\n"),
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Tokens::load(&path).is_err());
        }
    }
}
