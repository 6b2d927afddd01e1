//! Peer identities from certificates: SPIFFE URIs, else DNS names.

use polycall_core::Principal;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

fn names(cert: &CertificateDer<'_>) -> Vec<(bool, String)> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((true, (*u).to_owned())),
            GeneralName::DNSName(d) => Some((false, (*d).to_owned())),
            _ => None,
        })
        .collect()
}

/// The SPIFFE ID (`spiffe://trust-domain/path`) in the end-entity certificate's URI
/// SANs, if any.
pub fn spiffe_id(certs: &[CertificateDer<'_>]) -> Option<String> {
    names(certs.first()?)
        .into_iter()
        .find(|(uri, n)| *uri && n.starts_with("spiffe://"))
        .map(|(_, n)| n)
}

/// Who a verified certificate chain (end-entity first, as rustls reports
/// `peer_certificates()`) identifies: the SPIFFE URI SAN of the end-entity
/// certificate ([`Principal::Spiffe`]), else its first DNS name SAN
/// ([`Principal::Dns`]); `None` without either (or without certificates).
///
/// Call it only on chains the TLS handshake has verified.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<Principal> {
    let names = names(certs.first()?);
    if let Some((_, id)) = names
        .iter()
        .find(|(uri, n)| *uri && n.starts_with("spiffe://"))
    {
        return Some(Principal::Spiffe(id.as_str().into()));
    }
    names
        .into_iter()
        .find(|(uri, _)| !*uri)
        .map(|(_, n)| Principal::Dns(n.into()))
}
