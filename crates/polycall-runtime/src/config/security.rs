//! From `[tls]` and `[auth]` to what a runtime runs with: the TLS server settings, the
//! authenticator (tokens, OPAQUE users, client certificates) and the authorization
//! policy. Secrets are read here, at start (and on reload), from their references;
//! no error message quotes one.

use std::path::Path;
use std::sync::Arc;

use polycall_net::auth::{OpaqueUsers, ServerAuth};
use polycall_security::authz::Policy;
use polycall_security::hsm::HsmKey;
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{SecretRef, ServerTls};

use polycall_config::auth_file::AuthFile;
pub use polycall_config::auth_file::{AuthFileError, opaque_setup_path};
use polycall_config::{ClientAuth, Config};

/// Why the security configuration cannot be put in force.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// What the runtime secures itself with.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The TLS server settings (`None`: plain TCP).
    pub tls: Option<ServerTls>,
    /// How clients authenticate.
    pub auth: ServerAuth,
    /// Who may call what.
    pub policy: Policy,
}

fn file_ref(p: &Path) -> SecretRef {
    SecretRef::File(p.to_owned())
}

impl Security {
    /// Reads every reference `c` names.
    pub fn from_config(c: &Config) -> Result<Self, SecurityError> {
        let t = &c.tls;
        let tls = if t.enabled {
            let hsm_key = match (&t.hsm_module, &t.hsm_token, &t.hsm_key) {
                (Some(module), Some(token), Some(key)) => Some(HsmKey::new(
                    module.clone(),
                    token.clone(),
                    key.clone(),
                    t.hsm_pin_env.clone(),
                )),
                _ => None,
            };
            let mut tls = ServerTls::default()
                .client_auth(match t.client_auth {
                    ClientAuth::Off => polycall_security::ClientAuth::Off,
                    ClientAuth::Optional => polycall_security::ClientAuth::Optional,
                    ClientAuth::Required => polycall_security::ClientAuth::Required,
                })
                .crls(t.crl_file.as_deref().map(file_ref));
            tls.cert_chain = t.cert_file.as_deref().map(file_ref);
            tls.key = t.key_file.as_deref().map(file_ref);
            tls.hsm_key = hsm_key;
            tls.ca = t.ca_file.as_deref().map(file_ref);
            Some(tls)
        } else {
            None
        };
        let mut auth = ServerAuth::default()
            .anonymous(c.auth.anonymous)
            .certificate(c.auth.certificate);
        let mut policy = Policy::default();
        if let Some(f) = &c.auth.file {
            let file = AuthFile::read(f).map_err(|e| SecurityError(e.to_string()))?;
            let mut tokens = Tokens::default();
            for (name, reference) in &file.tokens {
                let r: SecretRef = reference
                    .parse()
                    .map_err(|e| SecurityError(format!("token {name}: {e}")))?;
                tokens
                    .insert_ref(name, &r)
                    .map_err(|e| SecurityError(format!("token {name}: {e}")))?;
            }
            auth.tokens = tokens;
            policy = Policy::new(&file.policy_config())
                .map_err(|e| SecurityError(format!("{}: {e}", f.display())))?;
        }
        if let Some(users_file) = &c.auth.users_file {
            let setup_path = opaque_setup_path(users_file);
            let setup = ServerSetup::load_or_create(&setup_path)
                .map_err(|e| SecurityError(format!("OPAQUE server secret: {e}")))?;
            let users = UserStore::open(users_file)
                .map_err(|e| SecurityError(format!("OPAQUE users: {e}")))?;
            auth.opaque = Some(Arc::new(OpaqueUsers { setup, users }));
        }
        Ok(Self { tls, auth, policy })
    }

    /// Whether a client must prove who it is (no anonymous sessions, and some method
    /// to prove it with).
    pub fn requires_authentication(&self) -> bool {
        !self.auth.anonymous
            && (!self.auth.tokens.is_empty() || self.auth.opaque.is_some() || self.auth.certificate)
    }

    /// Puts these settings into `rc`.
    pub fn apply(self, rc: &mut crate::RuntimeConfig) {
        rc.server.connection.authenticator = Some(Arc::new(self.auth));
        rc.qos.policy = Some(Arc::new(self.policy));
        rc.tls = self.tls;
    }
}
