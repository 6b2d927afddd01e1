//! rustls configurations: TLS 1.3 only, aws-lc-rs, ALPN `polycall/1`, client
//! authentication and revocation lists. A server's or client's private key is either
//! PEM (`key`) or held in a PKCS#11 token (`hsm_key`, see [`crate::hsm`]).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ConfigBuilder, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::hsm::HsmKey;
#[cfg(feature = "hsm")]
use crate::hsm::HsmSigningKey;
use crate::{Error, SecretRef};

/// The ALPN protocol id polycall offers and accepts.
pub const ALPN: &[u8] = b"polycall/1";

/// The one crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Whether a server asks clients for certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    Off,
    /// Clients may present a certificate; if they do, it must chain to the CA bundle
    /// (and not be revoked). Clients without one are let in (unauthenticated).
    Optional,
    /// Clients must present a valid certificate from the CA bundle.
    Required,
}

fn pem_reason(what: &str, e: pem::Error) -> String {
    // Deliberately coarse: never quote the text that was read.
    match e {
        pem::Error::NoItemsFound => format!("no {what} found in the PEM"),
        pem::Error::Io(e) => format!("reading {what}: {e}"),
        _ => format!("malformed PEM where {what} was expected"),
    }
}

/// Reads a certificate chain (end-entity first) from PEM.
pub fn load_certs(r: &SecretRef) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = r.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            reference: r.to_string(),
            reason: pem_reason("a certificate", e),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            reference: r.to_string(),
            reason: "no certificate found in the PEM".into(),
        });
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from PEM.
pub fn load_key(r: &SecretRef) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = r.read()?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Pem {
        reference: r.to_string(),
        reason: pem_reason("a private key", e),
    })
}

/// Reads certificate revocation lists from PEM (one reference may hold several).
pub fn load_crls(r: &SecretRef) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let bytes = r.read()?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            reference: r.to_string(),
            reason: pem_reason("a certificate revocation list", e),
        })?;
    if crls.is_empty() {
        return Err(Error::Pem {
            reference: r.to_string(),
            reason: "no certificate revocation list found in the PEM".into(),
        });
    }
    Ok(crls)
}

/// Reads a CA bundle into a root store.
pub fn load_roots(r: &SecretRef) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(r)? {
        roots.add(cert).map_err(|e| Error::Pem {
            reference: r.to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A server's TLS settings, all secrets by reference.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerTls {
    /// The certificate chain, end-entity first (PEM).
    pub cert_chain: Option<SecretRef>,
    /// The private key of the end-entity certificate (PEM). Exactly one of `key` and
    /// `hsm_key` is set.
    pub key: Option<SecretRef>,
    /// The private key of the end-entity certificate, held in a PKCS#11 token: the
    /// handshake signs inside the token and the key never enters this process.
    pub hsm_key: Option<HsmKey>,
    /// The CA bundle client certificates must chain to (needed unless
    /// `client_auth` is [`ClientAuth::Off`]).
    pub ca: Option<SecretRef>,
    /// Whether clients are asked for certificates.
    pub client_auth: ClientAuth,
    /// Revocation lists checked against client certificates.
    pub crls: Vec<SecretRef>,
    /// Accept client certificates whose revocation status no CRL covers (by default
    /// they are refused once any CRL is configured).
    pub allow_unknown_revocation: bool,
}

impl ServerTls {
    /// Sets the certificate chain, end-entity first (PEM).
    pub fn cert_chain(mut self, cert_chain: SecretRef) -> Self {
        self.cert_chain = Some(cert_chain);
        self
    }

    /// Sets the private key of the end-entity certificate (PEM); set this or `hsm_key`, not
    /// both.
    pub fn key(mut self, key: SecretRef) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the private key of the end-entity certificate held in a PKCS#11 token (instead
    /// of `key`).
    pub fn hsm_key(mut self, hsm_key: HsmKey) -> Self {
        self.hsm_key = Some(hsm_key);
        self
    }

    /// Sets the CA bundle client certificates must chain to (needed unless `client_auth` is
    /// [`ClientAuth::Off`]).
    pub fn ca(mut self, ca: SecretRef) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Sets whether clients are asked for certificates.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Sets the revocation lists checked against client certificates.
    pub fn crls(mut self, crls: impl IntoIterator<Item = SecretRef>) -> Self {
        self.crls = crls.into_iter().collect();
        self
    }

    /// Sets whether client certificates whose revocation status no CRL covers are accepted.
    pub fn allow_unknown_revocation(mut self, allow_unknown_revocation: bool) -> Self {
        self.allow_unknown_revocation = allow_unknown_revocation;
        self
    }
}

impl ServerTls {
    /// When the end-entity certificate stops being valid (its `notAfter`), read from
    /// the chain's reference.
    pub fn not_after(&self) -> Result<std::time::SystemTime, Error> {
        let chain = self
            .cert_chain
            .as_ref()
            .ok_or_else(|| Error::Config("the server needs a certificate chain".into()))?;
        let certs = load_certs(chain)?;
        let leaf = certs
            .first()
            .ok_or_else(|| Error::Config("the certificate chain is empty".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| Error::Config(format!("the server certificate does not parse: {e}")))?;
        let secs = x509.validity().not_after.timestamp();
        Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
    }

    /// Reads every reference and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        refuse_unbuilt_hsm(self.hsm_key.as_ref())?;
        let chain = self
            .cert_chain
            .as_ref()
            .ok_or_else(|| Error::Config("the server needs a certificate chain".into()))?;
        let chain = load_certs(chain)?;
        let identity = match (&self.key, &self.hsm_key) {
            (Some(key), None) => Identity::Key(chain, load_key(key)?),
            (None, Some(hsm)) => hsm_identity(chain, hsm)?,
            (None, None) => {
                return Err(Error::Config(
                    "the server needs a private key (key or hsm_key)".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "the server has both key and hsm_key; set only one".into(),
                ));
            }
        };
        let roots = self.ca.as_ref().map(load_roots).transpose()?;
        let mut crls = Vec::new();
        for r in &self.crls {
            crls.extend(load_crls(r)?);
        }
        build_server(
            identity,
            roots,
            self.client_auth,
            crls,
            self.allow_unknown_revocation,
        )
    }
}

/// A certificate chain with the key that signs for it.
enum Identity {
    /// A private key in memory.
    Key(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    /// A key that signs elsewhere (a PKCS#11 token), already checked against the chain.
    Certified(Arc<CertifiedKey>),
}

/// Loads a token-held key and pairs it with its certificate chain.
#[cfg(feature = "hsm")]
fn hsm_identity(chain: Vec<CertificateDer<'static>>, key: &HsmKey) -> Result<Identity, Error> {
    Ok(Identity::Certified(hsm_certified_key(chain, &key.load()?)?))
}

/// A build without the `hsm` feature cannot use a token-held key.
#[cfg(not(feature = "hsm"))]
fn hsm_identity(_chain: Vec<CertificateDer<'static>>, key: &HsmKey) -> Result<Identity, Error> {
    Err(Error::Hsm(key.not_built()))
}

/// Refuses a token-held key up front, before any file is read, when this build
/// cannot use one.
fn refuse_unbuilt_hsm(key: Option<&HsmKey>) -> Result<(), Error> {
    match key {
        Some(key) if !cfg!(feature = "hsm") => Err(Error::Hsm(key.not_built())),
        _ => Ok(()),
    }
}

/// Pairs a certificate chain (end-entity first) with a token-held key, checking that
/// the end-entity certificate certifies exactly that key.
#[cfg(feature = "hsm")]
pub fn hsm_certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &HsmSigningKey,
) -> Result<Arc<CertifiedKey>, Error> {
    let certified = CertifiedKey::new(chain, Arc::new(key.clone()));
    certified.keys_match().map_err(|e| {
        Error::Config(format!(
            "the certificate does not belong to key {:?} in token {:?}: {e}",
            key.key_label(),
            key.token_label()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// Builds a TLS 1.3-only server configuration (ALPN [`ALPN`]) from parsed parts.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Option<RootCertStore>,
    client_auth: ClientAuth,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    build_server(
        Identity::Key(chain, key),
        roots,
        client_auth,
        crls,
        allow_unknown_revocation,
    )
}

/// Like [`server_config`], with a key that signs elsewhere (see
/// [`hsm_certified_key`]).
pub fn server_config_certified(
    certified: Arc<CertifiedKey>,
    roots: Option<RootCertStore>,
    client_auth: ClientAuth,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    build_server(
        Identity::Certified(certified),
        roots,
        client_auth,
        crls,
        allow_unknown_revocation,
    )
}

fn with_server_identity(
    builder: ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    identity: Identity,
) -> Result<rustls::ServerConfig, Error> {
    Ok(match identity {
        Identity::Key(chain, key) => builder.with_single_cert(chain, key)?,
        Identity::Certified(c) => builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(c))),
    })
}

fn build_server(
    identity: Identity,
    roots: Option<RootCertStore>,
    client_auth: ClientAuth,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match client_auth {
        ClientAuth::Off => {
            if !crls.is_empty() {
                return Err(Error::Config(
                    "revocation lists are given but client authentication is off".into(),
                ));
            }
            with_server_identity(builder.with_no_client_auth(), identity)?
        }
        ClientAuth::Optional | ClientAuth::Required => {
            let roots = roots.ok_or_else(|| {
                Error::Config(format!(
                    "client authentication {client_auth:?} needs a CA bundle"
                ))
            })?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls(crls);
            if allow_unknown_revocation {
                v = v.allow_unknown_revocation_status();
            }
            if client_auth == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v
                .build()
                .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))?;
            with_server_identity(builder.with_client_cert_verifier(verifier), identity)?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS settings, all secrets by reference.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientTls {
    /// The CA bundle server certificates must chain to.
    pub ca: Option<SecretRef>,
    /// A client certificate chain, for mutual TLS (with `key`).
    pub cert_chain: Option<SecretRef>,
    /// The client certificate's private key (at most one of `key` and `hsm_key`).
    pub key: Option<SecretRef>,
    /// The client certificate's private key, held in a PKCS#11 token.
    pub hsm_key: Option<HsmKey>,
    /// Revocation lists checked against server certificates.
    pub crls: Vec<SecretRef>,
    /// Accept server certificates whose revocation status no CRL covers.
    pub allow_unknown_revocation: bool,
}

impl ClientTls {
    /// Sets the CA bundle server certificates must chain to.
    pub fn ca(mut self, ca: SecretRef) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Sets a client certificate chain, for mutual TLS (with `key`).
    pub fn cert_chain(mut self, cert_chain: SecretRef) -> Self {
        self.cert_chain = Some(cert_chain);
        self
    }

    /// Sets the client certificate's private key (set at most one of `key` and `hsm_key`).
    pub fn key(mut self, key: SecretRef) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the client certificate's private key held in a PKCS#11 token.
    pub fn hsm_key(mut self, hsm_key: HsmKey) -> Self {
        self.hsm_key = Some(hsm_key);
        self
    }

    /// Sets the revocation lists checked against server certificates.
    pub fn crls(mut self, crls: impl IntoIterator<Item = SecretRef>) -> Self {
        self.crls = crls.into_iter().collect();
        self
    }

    /// Sets whether server certificates whose revocation status no CRL covers are accepted.
    pub fn allow_unknown_revocation(mut self, allow_unknown_revocation: bool) -> Self {
        self.allow_unknown_revocation = allow_unknown_revocation;
        self
    }
}

impl ClientTls {
    /// Reads every reference and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        refuse_unbuilt_hsm(self.hsm_key.as_ref())?;
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| Error::Config("the client needs a CA bundle".into()))?;
        let identity = match (&self.cert_chain, &self.key, &self.hsm_key) {
            (Some(c), Some(k), None) => Some(Identity::Key(load_certs(c)?, load_key(k)?)),
            (Some(c), None, Some(h)) => Some(hsm_identity(load_certs(c)?, h)?),
            (None, None, None) => None,
            (_, Some(_), Some(_)) => {
                return Err(Error::Config(
                    "the client has both key and hsm_key; set only one".into(),
                ));
            }
            _ => {
                return Err(Error::Config(
                    "a client certificate needs both a chain and a key (key or hsm_key)".into(),
                ));
            }
        };
        let mut crls = Vec::new();
        for r in &self.crls {
            crls.extend(load_crls(r)?);
        }
        build_client(
            load_roots(ca)?,
            identity,
            crls,
            self.allow_unknown_revocation,
        )
    }
}

/// Builds a TLS 1.3-only client configuration (ALPN [`ALPN`]) from parsed parts.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    build_client(
        roots,
        identity.map(|(chain, key)| Identity::Key(chain, key)),
        crls,
        allow_unknown_revocation,
    )
}

/// Like [`client_config`], with a client certificate whose key signs elsewhere (see
/// [`hsm_certified_key`]).
pub fn client_config_certified(
    roots: RootCertStore,
    certified: Arc<CertifiedKey>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    build_client(
        roots,
        Some(Identity::Certified(certified)),
        crls,
        allow_unknown_revocation,
    )
}

fn build_client(
    roots: RootCertStore,
    identity: Option<Identity>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_unknown_revocation: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut v =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    if allow_unknown_revocation {
        v = v.allow_unknown_revocation_status();
    }
    let verifier = v
        .build()
        .map_err(|e| Error::Config(format!("server certificate verifier: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut config = match identity {
        Some(Identity::Key(chain, key)) => builder.with_client_auth_cert(chain, key)?,
        Some(Identity::Certified(c)) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(c)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A build without the `hsm` feature refuses a token-held key by name.
#[cfg(all(test, not(feature = "hsm")))]
mod without_hsm {
    use super::*;

    #[test]
    fn a_token_held_key_is_refused_as_not_built() {
        let hsm_key = HsmKey {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "polycall".into(),
            key_label: "node".into(),
            pin_env: "POLYCALL_HSM_PIN".into(),
        };
        let server = ServerTls {
            cert_chain: Some(SecretRef::File("/nonexistent/chain.pem".into())),
            hsm_key: Some(hsm_key),
            ..ServerTls::default()
        };
        let err = server.build().unwrap_err().to_string();
        assert!(err.contains("built without HSM support"), "{err}");
    }
}
