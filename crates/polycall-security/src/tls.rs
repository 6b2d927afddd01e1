//! rustls configurations: TLS 1.3 only, aws-lc-rs, ALPN `polycall/1`, client
//! authentication and revocation lists.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

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
pub struct ServerTls {
    /// The certificate chain, end-entity first (PEM).
    pub cert_chain: Option<SecretRef>,
    /// The private key of the end-entity certificate (PEM).
    pub key: Option<SecretRef>,
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
    /// Reads every reference and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let chain = self
            .cert_chain
            .as_ref()
            .ok_or_else(|| Error::Config("the server needs a certificate chain".into()))?;
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::Config("the server needs a private key".into()))?;
        let roots = self.ca.as_ref().map(load_roots).transpose()?;
        let mut crls = Vec::new();
        for r in &self.crls {
            crls.extend(load_crls(r)?);
        }
        server_config(
            load_certs(chain)?,
            load_key(key)?,
            roots,
            self.client_auth,
            crls,
            self.allow_unknown_revocation,
        )
    }
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
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match client_auth {
        ClientAuth::Off => {
            if !crls.is_empty() {
                return Err(Error::Config(
                    "revocation lists are given but client authentication is off".into(),
                ));
            }
            builder.with_no_client_auth().with_single_cert(chain, key)?
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
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS settings, all secrets by reference.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA bundle server certificates must chain to.
    pub ca: Option<SecretRef>,
    /// A client certificate chain, for mutual TLS (with `key`).
    pub cert_chain: Option<SecretRef>,
    /// The client certificate's private key.
    pub key: Option<SecretRef>,
    /// Revocation lists checked against server certificates.
    pub crls: Vec<SecretRef>,
    /// Accept server certificates whose revocation status no CRL covers.
    pub allow_unknown_revocation: bool,
}

impl ClientTls {
    /// Reads every reference and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| Error::Config("the client needs a CA bundle".into()))?;
        let identity = match (&self.cert_chain, &self.key) {
            (Some(c), Some(k)) => Some((load_certs(c)?, load_key(k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "a client certificate needs both a chain and a key".into(),
                ));
            }
        };
        let mut crls = Vec::new();
        for r in &self.crls {
            crls.extend(load_crls(r)?);
        }
        client_config(
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
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
