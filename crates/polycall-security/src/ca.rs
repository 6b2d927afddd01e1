//! A small certificate authority: one self-signed CA in a directory (`ca.pem`,
//! `ca.key`), certificates with DNS and SPIFFE names, and revocation lists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::Error;

/// The CA certificate's file name in the CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA private key's file name in the CA directory (mode 0600).
pub const CA_KEY: &str = "ca.key";

/// A certificate authority loaded from (or created in) a directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What to put in an issued certificate besides its name.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssueOptions {
    /// Valid from…
    pub not_before: SystemTime,
    /// …until. Both in the past gives an expired certificate (for tests).
    pub not_after: SystemTime,
    /// Also name `localhost`, 127.0.0.1 and ::1 (for loopback tests and local nodes).
    pub loopback: bool,
    /// More IP address SANs.
    pub ips: Vec<IpAddr>,
}

impl Default for IssueOptions {
    /// Valid from a minute ago (clock skew) for 90 days; no loopback names.
    fn default() -> Self {
        Self::valid_for(Duration::from_secs(90 * 24 * 3600))
    }
}

impl IssueOptions {
    /// Valid from a minute ago for `d`.
    pub fn valid_for(d: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(60),
            not_after: now + d,
            loopback: false,
            ips: Vec::new(),
        }
    }

    /// Already expired: valid from two days ago until one day ago.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(2 * 86_400),
            not_after: now - Duration::from_secs(86_400),
            loopback: false,
            ips: Vec::new(),
        }
    }

    /// Adds the loopback names.
    pub fn with_loopback(mut self) -> Self {
        self.loopback = true;
        self
    }

    /// Sets when the certificate becomes valid.
    pub fn not_before(mut self, not_before: SystemTime) -> Self {
        self.not_before = not_before;
        self
    }

    /// Sets when the certificate stops being valid (both in the past gives an expired
    /// certificate, for tests).
    pub fn not_after(mut self, not_after: SystemTime) -> Self {
        self.not_after = not_after;
        self
    }

    /// Sets whether the certificate also names `localhost`, 127.0.0.1 and ::1.
    pub fn loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }

    /// Sets more IP address SANs.
    pub fn ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ips = ips.into_iter().collect();
        self
    }
}

/// An issued certificate.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM): a secret, store with [`write_private`](crate::write_private).
    pub key_pem: String,
    /// Its serial number (big-endian bytes), to revoke it with [`Ca::crl`].
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("key_pem", &"<secret>")
            .finish_non_exhaustive()
    }
}

/// A certificate issued for a public key whose private key this CA never saw
/// ([`Ca::issue_for_public_key`]).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its serial number (big-endian bytes), to revoke it with [`Ca::crl`].
    pub serial: Vec<u8>,
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut b = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| Error::Config("no secure random numbers".into()))?;
    // Positive and without a leading zero byte, so DER keeps all 16 bytes.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn ca_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Ca {
        dir: dir.display().to_string(),
        reason: reason.into(),
    }
}

impl Ca {
    /// Creates a new CA (common name "polycall CA") in `dir`: `ca.pem` and `ca.key`
    /// (mode 0600) in a directory of mode 0700. Refuses to replace an existing key.
    pub fn init(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::init_named(dir, "polycall CA")
    }

    /// Like [`Ca::init`] with a chosen common name.
    pub fn init_named(dir: impl AsRef<Path>, common_name: &str) -> Result<Self, Error> {
        let dir = dir.as_ref();
        if dir.join(CA_KEY).exists() {
            return Err(ca_err(
                dir,
                format!("{CA_KEY} already exists; not replacing it"),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| ca_err(dir, e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ca_err(dir, e.to_string()))?;
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        crate::write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())
            .map_err(|e| ca_err(dir, format!("writing {CA_KEY}: {e}")))?;
        std::fs::write(dir.join(CA_CERT), &cert_pem)
            .map_err(|e| ca_err(dir, format!("writing {CA_CERT}: {e}")))?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA in `dir`. Refuses a key file others can read.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let key_path = dir.join(CA_KEY);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta =
                std::fs::metadata(&key_path).map_err(|e| ca_err(dir, format!("{CA_KEY}: {e}")))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(ca_err(
                    dir,
                    format!("{CA_KEY} is accessible to group or others; chmod 600 it"),
                ));
            }
        }
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(|e| ca_err(dir, format!("{CA_KEY}: {e}")))?;
        let cert_pem = std::fs::read_to_string(dir.join(CA_CERT))
            .map_err(|e| ca_err(dir, format!("{CA_CERT}: {e}")))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| ca_err(dir, format!("{CA_KEY} is not a usable private key")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| ca_err(dir, format!("{CA_CERT}: {e}")))?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem,
            issuer,
        })
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): the bundle peers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `name` (a DNS name SAN and the common name), with the
    /// SPIFFE ID `spiffe` (`spiffe://trust-domain/path`) as a URI SAN when given. It
    /// is usable both as a server and as a client certificate.
    pub fn issue(
        &self,
        name: &str,
        spiffe: Option<&str>,
        options: IssueOptions,
    ) -> Result<Issued, Error> {
        let (params, serial) = leaf_params(name, spiffe, &options)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// Like [`Ca::issue`], for a key pair made elsewhere (for example inside an HSM,
    /// see [`crate::hsm::HsmKey::generate`]): certifies the public key `spki_der`
    /// (SubjectPublicKeyInfo DER: ECDSA P-256/P-384, Ed25519 or RSA).
    pub fn issue_for_public_key(
        &self,
        name: &str,
        spiffe: Option<&str>,
        spki_der: &[u8],
        options: IssueOptions,
    ) -> Result<IssuedCert, Error> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| Error::Config(format!("not a usable public key (SPKI DER): {e}")))?;
        let (params, serial) = leaf_params(name, spiffe, &options)?;
        let cert = params.signed_by(&public, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A revocation list (PEM) revoking `serials`, valid for `next_update`.
    pub fn crl(&self, serials: &[Vec<u8>], next_update: Duration) -> Result<String, Error> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: OffsetDateTime::from(SystemTime::now() + next_update),
            crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// The parameters of an end-entity certificate (see [`Ca::issue`]) and its serial.
fn leaf_params(
    name: &str,
    spiffe: Option<&str>,
    options: &IssueOptions,
) -> Result<(CertificateParams, SerialNumber), Error> {
    let mut sans =
        vec![SanType::DnsName(name.try_into().map_err(|_| {
            Error::Config(format!("{name:?} is not a DNS name"))
        })?)];
    if let Some(id) = spiffe {
        validate_spiffe(id)?;
        sans.push(SanType::URI(id.try_into().map_err(|_| {
            Error::Config(format!("{id:?} is not a valid URI"))
        })?));
    }
    if options.loopback {
        if name != "localhost" {
            sans.push(SanType::DnsName("localhost".try_into()?));
        }
        sans.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        sans.push(SanType::IpAddress(IpAddr::from(
            std::net::Ipv6Addr::LOCALHOST,
        )));
    }
    sans.extend(options.ips.iter().copied().map(SanType::IpAddress));

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial()?;
    params.serial_number = Some(serial.clone());
    params.not_before = options.not_before.into();
    params.not_after = options.not_after.into();
    Ok((params, serial))
}

fn validate_spiffe(id: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Config(format!("{id:?} is not a SPIFFE ID: {why}")));
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return bad("it must start with spiffe://");
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return bad("the trust domain is lowercase letters, digits, '-', '.' and '_'");
    }
    if path.split('/').any(|s| s.is_empty() && !path.is_empty()) || id.ends_with('/') {
        return bad("empty path segment");
    }
    if id.contains(['?', '#']) {
        return bad("no query or fragment");
    }
    Ok(())
}
