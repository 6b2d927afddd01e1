//! The file `auth.file` names: bearer tokens by reference, roles, authorization rules.
//! Read and checked here (its TOML, that every token is a reference, that the rules
//! compile); the secrets themselves are read by whoever puts the file in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polycall_security::SecretRef;
use polycall_security::authz::{Policy, PolicyConfig, RuleConfig};
use serde::Deserialize;

use crate::load::line_col;

/// The file `auth.file` names: bearer tokens by name, roles and authorization rules.
///
/// ```toml
/// [tokens]
/// ci = "env:POLYCALL_CI_TOKEN"      # or "file:/run/secrets/ci-token"
///
/// [roles]
/// ops = ["user:alice", "spiffe://example.org/ops/*"]
///
/// [[rules]]
/// service = "sys"
/// method = "ping"
/// allow = ["any"]
///
/// [[rules]]
/// service = "inventory"
/// allow = ["authenticated"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Token name → secret reference (`env:NAME` or `file:PATH`, never the token).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// Role name → principal patterns.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Authorization rules; once any exists, what no rule allows is denied.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl AuthFile {
    /// Reads and checks the file: its TOML, token references and rules. Errors are
    /// `FILE:LINE:COL: what` when the position is known.
    pub fn read(path: &Path) -> Result<Self, AuthFileError> {
        Self::read_checked(path).map_err(AuthFileError)
    }

    fn read_checked(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: AuthFile = toml::from_str(&text).map_err(|e| match e.span() {
            Some(span) => {
                let (l, c) = line_col(&text, span.start);
                format!("{}:{l}:{c}: {}", path.display(), e.message())
            }
            None => format!("{}: {}", path.display(), e.message()),
        })?;
        for (name, reference) in &file.tokens {
            if !polycall_security::token::valid_name(name) {
                return Err(format!(
                    "{}: token name {name:?}: use letters, digits, '-', '_' or '.'",
                    path.display()
                ));
            }
            let r: SecretRef = reference
                .parse()
                .map_err(|e| format!("{}: token {name}: {e}", path.display()))?;
            if !reference.starts_with("env:") && !reference.starts_with("file:") {
                return Err(format!(
                    "{}: token {name}: write a reference (`env:NAME` or `file:PATH`), never the token itself",
                    path.display()
                ));
            }
            let _ = r;
        }
        Policy::new(&file.policy_config()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    /// The roles and rules.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig::default()
            .roles(self.roles.clone())
            .rules(self.rules.clone())
    }
}

/// Why an `auth.file` is not usable; the message starts with `FILE[:LINE:COL]:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFileError(pub String);

/// Where the OPAQUE server secret lives: beside the users file.
pub fn opaque_setup_path(users_file: &Path) -> PathBuf {
    users_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("opaque-setup")
}
