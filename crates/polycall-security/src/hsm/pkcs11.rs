//! The PKCS#11 side: modules, tokens, sessions, and the signing key rustls uses.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::alg_id;
use sha2::Digest;

use super::{HsmAlgorithm, HsmError, HsmKey, KeyProtection};
/// Loads and initializes a module once per process; later calls share it.
fn module(path: &Path) -> Result<Pkcs11, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = lock(MODULES.get_or_init(Default::default));
    if let Some(ctx) = map.get(path) {
        return Ok(ctx.clone());
    }
    if !path.exists() {
        return Err(HsmError::ModuleMissing {
            module: path.to_owned(),
        });
    }
    let ctx = Pkcs11::new(path).map_err(|e| HsmError::Module {
        module: path.to_owned(),
        stage: "loaded",
        reason: e.to_string(),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process initialized it (another path to the same
        // library): that initialization serves us too.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(HsmError::Module {
                module: path.to_owned(),
                stage: "initialized",
                reason: e.to_string(),
            });
        }
    }
    map.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token found in a module.
struct Token {
    ctx: Pkcs11,
    module: PathBuf,
    label: String,
    slot: Slot,
}

impl Token {
    fn find(module_path: &Path, label: &str) -> Result<Self, HsmError> {
        let ctx = module(module_path)?;
        let fail = |operation| {
            move |e: CkError| HsmError::Pkcs11 {
                module: module_path.to_owned(),
                token: label.to_owned(),
                operation,
                reason: e.to_string(),
            }
        };
        let mut available = Vec::new();
        for slot in ctx
            .get_slots_with_initialized_token()
            .map_err(fail("C_GetSlotList"))?
        {
            let info = ctx.get_token_info(slot).map_err(fail("C_GetTokenInfo"))?;
            if info.label() == label {
                return Ok(Self {
                    ctx,
                    module: module_path.to_owned(),
                    label: label.to_owned(),
                    slot,
                });
            }
            available.push(info.label().to_owned());
        }
        Err(HsmError::TokenNotFound {
            module: module_path.to_owned(),
            token: label.to_owned(),
            available,
        })
    }

    fn error(&self, operation: &'static str, e: CkError) -> HsmError {
        HsmError::Pkcs11 {
            module: self.module.clone(),
            token: self.label.clone(),
            operation,
            reason: e.to_string(),
        }
    }

    /// Opens a session and logs the user in.
    fn session(&self, rw: bool, pin: &AuthPin, pin_env: &str) -> Result<Session, HsmError> {
        let session = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| self.error("C_OpenSession", e))?;
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            )) => Err(HsmError::WrongPin {
                module: self.module.clone(),
                token: self.label.clone(),
                var: pin_env.to_owned(),
            }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
                module: self.module.clone(),
                token: self.label.clone(),
            }),
            Err(e) => Err(self.error("C_Login", e)),
        }
    }

    /// The private key labelled `key`.
    fn private_key(&self, session: &Session, key: &str) -> Result<ObjectHandle, HsmError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(key.as_bytes().to_vec()),
            ])
            .map_err(|e| self.error("C_FindObjects", e))?;
        match found.as_slice() {
            [] => Err(HsmError::KeyNotFound {
                token: self.label.clone(),
                key: key.to_owned(),
            }),
            [one] => Ok(*one),
            more => Err(HsmError::KeyAmbiguous {
                token: self.label.clone(),
                key: key.to_owned(),
                count: more.len(),
            }),
        }
    }

    /// The kind of the private key `handle` and its public key (SPKI DER).
    fn describe(
        &self,
        session: &Session,
        handle: ObjectHandle,
        key: &str,
    ) -> Result<(Kind, SubjectPublicKeyInfoDer<'static>), HsmError> {
        let public_err = |reason: String| HsmError::PublicKey {
            token: self.label.clone(),
            key: key.to_owned(),
            reason,
        };
        let unsupported = |reason: String| HsmError::UnsupportedKey {
            token: self.label.clone(),
            key: key.to_owned(),
            reason,
        };
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::Id,
                    AttributeType::EcParams,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|e| self.error("C_GetAttributeValue", e))?;
        let (mut key_type, mut id, mut ec_params, mut modulus, mut exponent) =
            (None, None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Id(v) if !v.is_empty() => id = Some(v),
                Attribute::EcParams(v) => ec_params = Some(v),
                Attribute::Modulus(v) => modulus = Some(v),
                Attribute::PublicExponent(v) => exponent = Some(v),
                _ => {}
            }
        }
        match key_type {
            Some(t) if t == KeyType::EC => {
                let params =
                    ec_params.ok_or_else(|| public_err("the key has no CKA_EC_PARAMS".into()))?;
                let curve = Curve::from_params(&params)
                    .ok_or_else(|| unsupported("its curve is not NIST P-256 or P-384".into()))?;
                let mut templates = Vec::new();
                if let Some(id) = id {
                    templates.push(vec![
                        Attribute::Class(ObjectClass::PUBLIC_KEY),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Id(id),
                    ]);
                }
                templates.push(vec![
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Label(key.as_bytes().to_vec()),
                ]);
                let mut public = None;
                for t in &templates {
                    let found = session
                        .find_objects(t)
                        .map_err(|e| self.error("C_FindObjects", e))?;
                    if let Some(h) = found.first() {
                        public = Some(*h);
                        break;
                    }
                }
                let public = public.ok_or_else(|| {
                    public_err("no public key object carries its CKA_ID or label".into())
                })?;
                let point = session
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .map_err(|e| self.error("C_GetAttributeValue", e))?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(v) => Some(v),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        public_err("the public key object has no CKA_EC_POINT".into())
                    })?;
                let point = curve.uncompressed_point(&point).ok_or_else(|| {
                    public_err(
                        "CKA_EC_POINT is not an uncompressed point on the key's curve".into(),
                    )
                })?;
                Ok((
                    Kind::Ec(curve),
                    rustls::sign::public_key_to_spki(&curve.alg_id(), point),
                ))
            }
            Some(t) if t == KeyType::RSA => {
                let (Some(n), Some(e)) = (modulus, exponent) else {
                    return Err(public_err(
                        "the key shows no CKA_MODULUS / CKA_PUBLIC_EXPONENT".into(),
                    ));
                };
                let bits = significant_bits(&n);
                if bits < 2048 {
                    return Err(unsupported(format!(
                        "an RSA modulus of {bits} bits is too short (at least 2048)"
                    )));
                }
                let mut body = der_uint(&n);
                body.extend(der_uint(&e));
                Ok((
                    Kind::Rsa,
                    rustls::sign::public_key_to_spki(&alg_id::RSA_ENCRYPTION, der_tlv(0x30, &body)),
                ))
            }
            Some(t) => Err(unsupported(format!(
                "its key type is {t}; ECDSA (P-256, P-384) and RSA are supported"
            ))),
            None => Err(public_err("the key shows no CKA_KEY_TYPE".into())),
        }
    }
}

fn read_pin(var: &str, token: &str) -> Result<AuthPin, HsmError> {
    match std::env::var(var) {
        Ok(p) if p.is_empty() => Err(HsmError::PinEnvInvalid {
            var: var.to_owned(),
            token: token.to_owned(),
            reason: "is empty",
        }),
        Ok(p) => Ok(AuthPin::from(p)),
        Err(std::env::VarError::NotPresent) => Err(HsmError::PinEnvUnset {
            var: var.to_owned(),
            token: token.to_owned(),
        }),
        Err(std::env::VarError::NotUnicode(_)) => Err(HsmError::PinEnvInvalid {
            var: var.to_owned(),
            token: token.to_owned(),
            reason: "is not valid UTF-8",
        }),
    }
}

// ---------------------------------------------------------------------------------
// Key kinds and the little DER this needs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// DER of the named-curve OIDs, as CKA_EC_PARAMS holds them.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

impl Curve {
    fn from_params(p: &[u8]) -> Option<Self> {
        match p {
            P256_PARAMS => Some(Self::P256),
            P384_PARAMS => Some(Self::P384),
            _ => None,
        }
    }

    fn params(self) -> &'static [u8] {
        match self {
            Self::P256 => P256_PARAMS,
            Self::P384 => P384_PARAMS,
        }
    }

    fn field_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn alg_id(self) -> rustls_pki_types::AlgorithmIdentifier {
        match self {
            Self::P256 => alg_id::ECDSA_P256,
            Self::P384 => alg_id::ECDSA_P384,
        }
    }

    /// The uncompressed point from CKA_EC_POINT, which tokens give either wrapped in a
    /// DER OCTET STRING (as the standard says) or raw.
    fn uncompressed_point(self, v: &[u8]) -> Option<Vec<u8>> {
        let want = 1 + 2 * self.field_len();
        let point = if v.len() == want {
            v
        } else {
            match v {
                [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
                [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
                _ => return None,
            }
        };
        (point.len() == want && point[0] == 0x04).then(|| point.to_vec())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ec(Curve),
    Rsa,
}

impl Kind {
    /// The TLS 1.3 schemes this key can sign with, preferred first.
    fn schemes(self) -> &'static [SignatureScheme] {
        match self {
            Self::Ec(Curve::P256) => &[SignatureScheme::ECDSA_NISTP256_SHA256],
            Self::Ec(Curve::P384) => &[SignatureScheme::ECDSA_NISTP384_SHA384],
            Self::Rsa => &[
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::RSA_PSS_SHA384,
                SignatureScheme::RSA_PSS_SHA512,
            ],
        }
    }
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `v`.
fn der_uint(v: &[u8]) -> Vec<u8> {
    let skip = v.iter().take_while(|b| **b == 0).count();
    let v = &v[skip..];
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    der_tlv(0x02, &content)
}

fn significant_bits(v: &[u8]) -> usize {
    let skip = v.iter().take_while(|b| **b == 0).count();
    match v.get(skip) {
        Some(first) => (v.len() - skip) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// PKCS#11 ECDSA gives `r || s`; TLS wants a DER `ECDSA-Sig-Value`.
fn ecdsa_der(raw: &[u8], curve: Curve) -> Option<Vec<u8>> {
    if raw.len() != 2 * curve.field_len() {
        return None;
    }
    let (r, s) = raw.split_at(curve.field_len());
    let mut body = der_uint(r);
    body.extend(der_uint(s));
    Some(der_tlv(0x30, &body))
}

// ---------------------------------------------------------------------------------
// Loading and signing.

/// An open session and the private key's handle in it.
struct Live {
    session: Session,
    key: ObjectHandle,
}

struct Inner {
    token: Token,
    key_label: String,
    pin_env: String,
    /// Kept (as a zeroizing secret) to log in again if the token drops the session.
    pin: AuthPin,
    kind: Kind,
    spki: SubjectPublicKeyInfoDer<'static>,
    live: Mutex<Live>,
    signs: AtomicU64,
}

/// A private key held in a PKCS#11 token, usable as a rustls signing key. Cloning
/// shares the same token session.
#[derive(Clone)]
pub struct HsmSigningKey {
    inner: Arc<Inner>,
}

impl fmt::Debug for HsmSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmSigningKey")
            .field("module", &self.inner.token.module)
            .field("token", &self.inner.token.label)
            .field("key", &self.inner.key_label)
            .field("kind", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

fn loaded() -> MutexGuard<'static, HashMap<HsmKey, Weak<Inner>>> {
    static LOADED: OnceLock<Mutex<HashMap<HsmKey, Weak<Inner>>>> = OnceLock::new();
    lock(LOADED.get_or_init(Default::default))
}

impl HsmKey {
    /// Loads the key: initializes the module (once per process), finds the token by
    /// its label, logs in with the PIN from `pin_env`, and finds the private key by
    /// `CKA_LABEL` and its public key. While an earlier load of the same `HsmKey` is
    /// alive, returns that one.
    pub fn load(&self) -> Result<HsmSigningKey, HsmError> {
        let mut cache = loaded();
        if let Some(inner) = cache.get(self).and_then(Weak::upgrade) {
            return Ok(HsmSigningKey { inner });
        }
        let token = Token::find(&self.module, &self.token_label)?;
        let pin = read_pin(&self.pin_env, &self.token_label)?;
        let session = token.session(false, &pin, &self.pin_env)?;
        let key = token.private_key(&session, &self.key_label)?;
        let (kind, spki) = token.describe(&session, key, &self.key_label)?;
        let inner = Arc::new(Inner {
            token,
            key_label: self.key_label.clone(),
            pin_env: self.pin_env.clone(),
            pin,
            kind,
            spki,
            live: Mutex::new(Live { session, key }),
            signs: AtomicU64::new(0),
        });
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(self.clone(), Arc::downgrade(&inner));
        Ok(HsmSigningKey { inner })
    }

    /// Generates a key pair inside the token under this key's label: the private key
    /// is a token object that is sensitive, not extractable and can only sign; the
    /// public key is a token object with the same label and `CKA_ID`. Returns the
    /// public key (SPKI DER), for a CA to certify (see `Ca::issue_for_public_key`).
    /// Refuses to replace an existing key with the label.
    pub fn generate(
        &self,
        algorithm: HsmAlgorithm,
    ) -> Result<SubjectPublicKeyInfoDer<'static>, HsmError> {
        let token = Token::find(&self.module, &self.token_label)?;
        let pin = read_pin(&self.pin_env, &self.token_label)?;
        let session = token.session(true, &pin, &self.pin_env)?;
        let label = self.key_label.as_bytes().to_vec();
        let existing = session
            .find_objects(&[Attribute::Label(label.clone())])
            .map_err(|e| token.error("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(HsmError::KeyExists {
                token: self.token_label.clone(),
                key: self.key_label.clone(),
            });
        }
        let mut id = [0u8; 16];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut id)
            .map_err(|_| HsmError::Pkcs11 {
                module: self.module.clone(),
                token: self.token_label.clone(),
                operation: "generating a CKA_ID",
                reason: "no secure random numbers".into(),
            })?;
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Label(label.clone()),
            Attribute::Id(id.to_vec()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Label(label),
            Attribute::Id(id.to_vec()),
        ];
        let mechanism = match algorithm {
            HsmAlgorithm::EcdsaP256 | HsmAlgorithm::EcdsaP384 => {
                let curve = if algorithm == HsmAlgorithm::EcdsaP256 {
                    Curve::P256
                } else {
                    Curve::P384
                };
                public.push(Attribute::EcParams(curve.params().to_vec()));
                Mechanism::EccKeyPairGen
            }
            HsmAlgorithm::Rsa(bits) => {
                if bits < 2048 {
                    return Err(HsmError::UnsupportedKey {
                        token: self.token_label.clone(),
                        key: self.key_label.clone(),
                        reason: format!(
                            "an RSA modulus of {bits} bits is too short (at least 2048)"
                        ),
                    });
                }
                let bits = Ulong::try_from(bits as usize)
                    .map_err(|e| token.error("C_GenerateKeyPair", e))?;
                public.push(Attribute::ModulusBits(bits));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        let (_, private) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| token.error("C_GenerateKeyPair", e))?;
        let (_, spki) = token.describe(&session, private, &self.key_label)?;
        Ok(spki)
    }
}

impl HsmSigningKey {
    /// How many signatures the token has made with this key (through this process).
    pub fn sign_count(&self) -> u64 {
        self.inner.signs.load(Ordering::Relaxed)
    }

    /// The public key (SubjectPublicKeyInfo DER) a certificate for this key must carry.
    pub fn spki(&self) -> SubjectPublicKeyInfoDer<'static> {
        self.inner.spki.clone()
    }

    /// The key's label.
    pub fn key_label(&self) -> &str {
        &self.inner.key_label
    }

    /// The label of the token that holds the key.
    pub fn token_label(&self) -> &str {
        &self.inner.token.label
    }

    /// The PKCS#11 module.
    pub fn module(&self) -> &Path {
        &self.inner.token.module
    }

    /// Reads the key's protection attributes from the token. A missing attribute is
    /// reported the unsafe way (extractable, not sensitive).
    pub fn protection(&self) -> Result<KeyProtection, HsmError> {
        let live = lock(&self.inner.live);
        let token = &self.inner.token;
        let attrs = live
            .session
            .get_attributes(
                live.key,
                &[
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )
            .map_err(|e| token.error("C_GetAttributeValue", e))?;
        let mut p = KeyProtection {
            extractable: true,
            sensitive: false,
            never_extractable: false,
            always_sensitive: false,
            value_readable: true,
        };
        for a in attrs {
            match a {
                Attribute::Extractable(v) => p.extractable = v,
                Attribute::Sensitive(v) => p.sensitive = v,
                Attribute::NeverExtractable(v) => p.never_extractable = v,
                Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                _ => {}
            }
        }
        let secret = match self.inner.kind {
            Kind::Ec(_) => AttributeType::Value,
            Kind::Rsa => AttributeType::PrivateExponent,
        };
        let info = live
            .session
            .get_attribute_info(live.key, &[secret])
            .map_err(|e| token.error("C_GetAttributeValue", e))?;
        p.value_readable = matches!(info.first(), Some(AttributeInfo::Available(_)));
        Ok(p)
    }

    /// Opens a fresh session after the token dropped the old one, and checks the key
    /// found under the label is still the same key.
    fn reopen(&self) -> Result<Live, HsmError> {
        let i = &self.inner;
        let session = i.token.session(false, &i.pin, &i.pin_env)?;
        let key = i.token.private_key(&session, &i.key_label)?;
        let (_, spki) = i.token.describe(&session, key, &i.key_label)?;
        if spki != i.spki {
            return Err(HsmError::UnsupportedKey {
                token: i.token.label.clone(),
                key: i.key_label.clone(),
                reason: "the key under this label was replaced while in use; reload the TLS configuration".into(),
            });
        }
        Ok(Live { session, key })
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let i = &self.inner;
        let fail = |what: String| {
            rustls::Error::General(format!(
                "signing with key {:?} in token {:?} failed: {what}",
                i.key_label, i.token.label
            ))
        };
        let pss = |hash_alg, mgf, digest: Vec<u8>| {
            let s_len = Ulong::try_from(digest.len()).map_err(|e| fail(e.to_string()))?;
            Ok::<_, rustls::Error>((
                Mechanism::RsaPkcsPss(PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len,
                }),
                digest,
            ))
        };
        let (mechanism, digest) = match (i.kind, scheme) {
            (Kind::Ec(Curve::P256), SignatureScheme::ECDSA_NISTP256_SHA256) => {
                (Mechanism::Ecdsa, sha2::Sha256::digest(message).to_vec())
            }
            (Kind::Ec(Curve::P384), SignatureScheme::ECDSA_NISTP384_SHA384) => {
                (Mechanism::Ecdsa, sha2::Sha384::digest(message).to_vec())
            }
            (Kind::Rsa, SignatureScheme::RSA_PSS_SHA256) => pss(
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                sha2::Sha256::digest(message).to_vec(),
            )?,
            (Kind::Rsa, SignatureScheme::RSA_PSS_SHA384) => pss(
                MechanismType::SHA384,
                PkcsMgfType::MGF1_SHA384,
                sha2::Sha384::digest(message).to_vec(),
            )?,
            (Kind::Rsa, SignatureScheme::RSA_PSS_SHA512) => pss(
                MechanismType::SHA512,
                PkcsMgfType::MGF1_SHA512,
                sha2::Sha512::digest(message).to_vec(),
            )?,
            (kind, scheme) => return Err(fail(format!("{kind:?} cannot sign {scheme:?}"))),
        };
        let mut live = lock(&i.live);
        let raw = match live.session.sign(&mechanism, live.key, &digest) {
            Ok(sig) => sig,
            Err(CkError::Pkcs11(
                RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
                _,
            )) => {
                *live = self.reopen().map_err(|e| fail(e.to_string()))?;
                live.session
                    .sign(&mechanism, live.key, &digest)
                    .map_err(|e| fail(e.to_string()))?
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        drop(live);
        i.signs.fetch_add(1, Ordering::Relaxed);
        match i.kind {
            Kind::Ec(curve) => ecdsa_der(&raw, curve).ok_or_else(|| {
                fail(format!(
                    "the token returned a {}-byte ECDSA signature",
                    raw.len()
                ))
            }),
            Kind::Rsa => Ok(raw),
        }
    }
}

impl SigningKey for HsmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = *self
            .inner
            .kind
            .schemes()
            .iter()
            .find(|s| offered.contains(s))?;
        Some(Box::new(HsmSigner {
            key: self.clone(),
            scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(self.inner.spki.clone())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.inner.kind {
            Kind::Ec(_) => SignatureAlgorithm::ECDSA,
            Kind::Rsa => SignatureAlgorithm::RSA,
        }
    }
}

/// One chosen scheme of an [`HsmSigningKey`].
struct HsmSigner {
    key: HsmSigningKey,
    scheme: SignatureScheme,
}

impl fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmSigner")
            .field("key", &self.key)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key.sign(self.scheme, message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        assert_eq!(der_uint(&[0, 0, 0x12]), vec![0x02, 0x01, 0x12]);
        assert_eq!(der_uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_uint(&[0, 0]), vec![0x02, 0x01, 0x00]);
        let long = vec![0x7f; 200];
        let d = der_uint(&long);
        assert_eq!(&d[..3], &[0x02, 0x81, 200]);
        assert_eq!(significant_bits(&[0, 0x01, 0]), 9);
    }

    #[test]
    fn ecdsa_raw_signature_becomes_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 0x05; // s is tiny
        let der = ecdsa_der(&raw, Curve::P256).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x05]);
        assert!(ecdsa_der(&raw[..63], Curve::P256).is_none());
    }

    #[test]
    fn ec_points_are_unwrapped() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        assert_eq!(Curve::P256.uncompressed_point(&raw).unwrap(), raw);
        let wrapped = der_tlv(0x04, &raw);
        assert_eq!(Curve::P256.uncompressed_point(&wrapped).unwrap(), raw);
        assert!(Curve::P384.uncompressed_point(&wrapped).is_none());
    }
}
