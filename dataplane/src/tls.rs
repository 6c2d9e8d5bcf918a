//! What TLS termination ([`crate::listener::tls`]) and TLS to upstreams
//! ([`crate::upstream::tls`]) share: the rustls crypto provider (ring), built from Envoy's
//! `tls_params`; certificates and keys resolved from inline PEM, files or secrets; trust
//! anchors; and SAN matching.
//!
//! We use rustls with the ring provider: it is what tonic (our xDS client and server)
//! already links, it builds with no C toolchain beyond `cc`, and it covers every suite and
//! group Envoy's defaults offer that are not CBC or RSA key exchange. See `docs/tls.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use xds_types::secret::{Secret, SecretValue};
use xds_types::tls::{
    CertificatePair, CertificateSource, CipherSuite, DataSource, EcdhCurve, SanMatcher, SanType,
    SdsRef, SecretSource, TlsParams, TlsVersion, ValidationContext, ValidationSource,
};

/// Why a TLS context could not be built. Never carries key bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(#[from] xds_types::ValidationError),
    #[error("secret {0:?} has not arrived")]
    MissingSecret(String),
    #[error("secret {0:?} is not a {1}")]
    WrongSecret(String, &'static str),
    #[error("{0}")]
    Rustls(String),
}

/// The secrets a context may name: `static_resources.secrets` and those from SDS.
#[derive(Debug, Clone, Copy)]
pub struct Secrets<'a> {
    pub static_secrets: &'a [Secret],
    pub dynamic: &'a std::collections::BTreeMap<String, Secret>,
}

impl<'a> Secrets<'a> {
    /// The secret an `SdsSecretConfig` names, if it is there.
    pub fn get(&self, sds: &SdsRef) -> Option<&'a Secret> {
        match sds.source {
            SecretSource::Static => self.static_secrets.iter().find(|s| s.name == sds.name),
            SecretSource::Xds { .. } => self.dynamic.get(&sds.name),
        }
    }
}

/// Reads a file the config names (certificates, keys, CAs).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

fn load(source: &DataSource, field: &str) -> Result<Vec<u8>, TlsError> {
    Ok(source.load(&read_file, field)?)
}

/// The certificate pair a source resolves to.
pub fn certificate_pair<'a>(
    source: &'a CertificateSource,
    secrets: &Secrets<'a>,
) -> Result<&'a CertificatePair, TlsError> {
    match source {
        CertificateSource::Static(pair) => Ok(pair),
        CertificateSource::Sds(sds) => match secrets.get(sds).map(|s| &s.value) {
            Some(SecretValue::TlsCertificate(pair)) => Ok(pair),
            Some(_) => Err(TlsError::WrongSecret(sds.name.clone(), "tls_certificate")),
            None => Err(TlsError::MissingSecret(sds.name.clone())),
        },
    }
}

/// A loaded certificate and its signing key, with the names it serves.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// DNS SANs, lowercase, for SNI selection (`*.x` kept as is).
    pub dns_names: Vec<String>,
    /// URI SANs (Envoy's `By=` in `x-forwarded-client-cert`).
    pub uri_names: Vec<String>,
}

/// Loads a chain and key (reading files), checks the key matches the certificate.
pub fn load_certificate(
    pair: &CertificatePair,
    provider: &CryptoProvider,
) -> Result<LoadedCertificate, TlsError> {
    let chain_pem = load(&pair.certificate_chain, "certificate_chain")?;
    let key_pem = load(&pair.private_key, "private_key")?;
    xds_types::tls::check_pair(&chain_pem, &key_pem)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Rustls(format!("certificate_chain: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::Rustls("private_key: not a PEM private key".into()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::Rustls("private_key: unsupported key type".into()))?;
    let names = subject_alt_names(&chain[0]);
    Ok(LoadedCertificate {
        dns_names: names
            .iter()
            .filter(|(t, _)| *t == SanType::Dns)
            .map(|(_, n)| n.to_ascii_lowercase())
            .collect(),
        uri_names: names
            .iter()
            .filter(|(t, _)| *t == SanType::Uri)
            .map(|(_, n)| n.clone())
            .collect(),
        key: Arc::new(CertifiedKey::new(chain, signing)),
    })
}

/// A validation context with its CAs loaded.
#[derive(Debug, Clone)]
pub struct Validation {
    /// `None`: no chain check (SAN matchers only).
    pub roots: Option<Arc<RootCertStore>>,
    /// The CA certificates `roots` came from, for `/certs`.
    pub ca_certificates: Vec<CertificateDer<'static>>,
    pub subject_alt_names: Vec<SanMatcher>,
}

/// Resolves and loads a validation source.
pub fn validation(
    source: &ValidationSource,
    secrets: &Secrets<'_>,
) -> Result<Validation, TlsError> {
    let from_secret = |sds: &SdsRef| -> Result<&ValidationContext, TlsError> {
        match secrets.get(sds).map(|s| &s.value) {
            Some(SecretValue::ValidationContext(v)) => Ok(v),
            Some(_) => Err(TlsError::WrongSecret(
                sds.name.clone(),
                "validation_context",
            )),
            None => Err(TlsError::MissingSecret(sds.name.clone())),
        }
    };
    let (context, extra_sans): (&ValidationContext, &[SanMatcher]) = match source {
        ValidationSource::Static(v) => (v, &[]),
        ValidationSource::Sds(sds) => (from_secret(sds)?, &[]),
        ValidationSource::Combined { defaults, sds } => {
            (from_secret(sds)?, defaults.subject_alt_names.as_slice())
        }
    };
    let (roots, ca_certificates) = match &context.trusted_ca {
        None => (None, Vec::new()),
        Some(ca) => {
            let (roots, certificates) = roots(&load(ca, "trusted_ca")?)?;
            (Some(Arc::new(roots)), certificates)
        }
    };
    let mut subject_alt_names = context.subject_alt_names.clone();
    subject_alt_names.extend(extra_sans.iter().cloned());
    Ok(Validation {
        roots,
        ca_certificates,
        subject_alt_names,
    })
}

fn roots(pem: &[u8]) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let mut store = RootCertStore::empty();
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Rustls(format!("trusted_ca: {e}")))?;
    for cert in &certificates {
        store
            .add(cert.clone())
            .map_err(|e| TlsError::Rustls(format!("trusted_ca: {e}")))?;
    }
    if store.is_empty() {
        return Err(TlsError::Rustls("trusted_ca: no certificate".into()));
    }
    Ok((store, certificates))
}

/// The SAN entries of a DER certificate, as `(type, text)`.
pub fn subject_alt_names(der: &[u8]) -> Vec<(SanType, String)> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some((SanType::Dns, d.to_string())),
            GeneralName::URI(u) => Some((SanType::Uri, u.to_string())),
            GeneralName::RFC822Name(e) => Some((SanType::Email, e.to_string())),
            GeneralName::IPAddress(bytes) => ip_text(bytes).map(|ip| (SanType::IpAddress, ip)),
            _ => None,
        })
        .collect()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// Whether the certificate has a SAN one of `matchers` accepts (true when there are none).
pub fn san_matches(der: &[u8], matchers: &[SanMatcher]) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let names = subject_alt_names(der);
    matchers.iter().any(|m| {
        names
            .iter()
            .any(|(t, v)| (m.san_type == SanType::Any || m.san_type == *t) && m.matcher.matches(v))
    })
}

/// The ring provider restricted to `params`' suites and groups.
pub fn provider(params: &TlsParams) -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    let mut provider = default_provider();
    if !params.cipher_suites.is_empty() {
        let mut suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect();
        suites.extend(params.cipher_suites.iter().map(|s| match s {
            CipherSuite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheEcdsaChacha20Poly1305 => {
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            CipherSuite::EcdheRsaChacha20Poly1305 => {
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
        }));
        provider.cipher_suites = suites;
    }
    if !params.ecdh_curves.is_empty() {
        provider.kx_groups = params
            .ecdh_curves
            .iter()
            .map(|c| match c {
                EcdhCurve::X25519 => kx_group::X25519,
                EcdhCurve::P256 => kx_group::SECP256R1,
                EcdhCurve::P384 => kx_group::SECP384R1,
            })
            .collect();
    }
    Arc::new(provider)
}

/// The protocol versions `params` allow.
pub fn versions(params: &TlsParams) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut out = Vec::new();
    if params.min_version <= TlsVersion::Tls13 && params.max_version >= TlsVersion::Tls13 {
        out.push(&rustls::version::TLS13);
    }
    if params.min_version <= TlsVersion::Tls12 {
        out.push(&rustls::version::TLS12);
    }
    out
}

/// A certificate's facts for `/certs`: subject, SANs, serial, validity. Never the key.
pub fn certificate_info(der: &[u8]) -> serde_json::Value {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return serde_json::json!({ "error": "unparsable certificate" });
    };
    let validity = cert.validity();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expires = validity.not_after.timestamp();
    let sans: Vec<serde_json::Value> = subject_alt_names(der)
        .into_iter()
        .map(|(t, v)| {
            let key = match t {
                SanType::Dns => "dns",
                SanType::Uri => "uri",
                SanType::Email => "email",
                SanType::IpAddress => "ip_address",
                SanType::Any => "other",
            };
            serde_json::json!({ key: v })
        })
        .collect();
    serde_json::json!({
        "subject": cert.subject().to_string(),
        "serial_number": cert.raw_serial_as_string().replace(':', ""),
        "subject_alt_names": sans,
        "days_until_expiration": ((expires - now) / 86_400).max(0).to_string(),
        "valid_from": validity.not_before.to_rfc2822().unwrap_or_default(),
        "expiration_time": validity.not_after.to_rfc2822().unwrap_or_default(),
    })
}

/// Cache of file metadata, so an unchanged file is not read again on every snapshot.
pub type FileStamps = HashMap<std::path::PathBuf, (std::time::SystemTime, u64)>;

/// The modification time and size of every file a context reads (to tell a rotated file).
pub fn file_stamps<'a>(sources: impl Iterator<Item = &'a DataSource>) -> FileStamps {
    sources
        .filter_map(|s| match s {
            DataSource::File(p) => {
                let meta = std::fs::metadata(p).ok()?;
                Some((p.clone(), (meta.modified().ok()?, meta.len())))
            }
            DataSource::Inline(_) => None,
        })
        .collect()
}

/// Reads and checks the certificate, key and CA files a listener's chains name, so a
/// missing or broken file rejects the listener with the field instead of failing later.
pub fn check_listener_files(
    listener: &xds_types::Listener,
) -> Result<(), xds_types::ValidationError> {
    let chains = listener
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            listener
                .default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    for (path, chain) in chains {
        let Some(tls) = &chain.tls else { continue };
        let at = format!("{path}.transport_socket.typed_config.common_tls_context");
        for (j, c) in tls.certificates.iter().enumerate() {
            if let CertificateSource::Static(pair) = c {
                check_pair_files(pair)
                    .map_err(|e| e.within(format!("{at}.tls_certificates[{j}]")))?;
            }
        }
        for ca in tls.validation_files() {
            check_ca_file(ca).map_err(|e| e.within(format!("{at}.validation_context")))?;
        }
    }
    Ok(())
}

/// As [`check_listener_files`], for a cluster's upstream TLS.
pub fn check_cluster_files(cluster: &xds_types::Cluster) -> Result<(), xds_types::ValidationError> {
    let Some(tls) = &cluster.tls else {
        return Ok(());
    };
    let at = "transport_socket.typed_config.common_tls_context";
    if let Some(CertificateSource::Static(pair)) = &tls.client_certificate {
        check_pair_files(pair).map_err(|e| e.within(format!("{at}.tls_certificates[0]")))?;
    }
    for ca in tls.validation_files() {
        check_ca_file(ca).map_err(|e| e.within(format!("{at}.validation_context")))?;
    }
    Ok(())
}

/// As [`check_listener_files`], for a secret (which may name files on the node).
pub fn check_secret_files(secret: &Secret) -> Result<(), xds_types::ValidationError> {
    match &secret.value {
        SecretValue::TlsCertificate(pair) => {
            check_pair_files(pair).map_err(|e| e.within("tls_certificate"))
        }
        SecretValue::ValidationContext(v) => match &v.trusted_ca {
            Some(ca) => check_ca_file(ca).map_err(|e| e.within("validation_context")),
            None => Ok(()),
        },
    }
}

/// Bootstrap-wide [`check_listener_files`] and friends, with bootstrap paths.
pub fn check_bootstrap_files(b: &xds_types::Bootstrap) -> Result<(), xds_types::ValidationError> {
    for (i, l) in b.listeners.iter().enumerate() {
        check_listener_files(l)
            .map_err(|e| e.within(format!("static_resources.listeners[{i}]")))?;
    }
    for (i, c) in b.clusters.iter().enumerate() {
        check_cluster_files(c).map_err(|e| e.within(format!("static_resources.clusters[{i}]")))?;
    }
    for (i, s) in b.secrets.iter().enumerate() {
        check_secret_files(s).map_err(|e| e.within(format!("static_resources.secrets[{i}]")))?;
    }
    Ok(())
}

fn check_pair_files(pair: &CertificatePair) -> Result<(), xds_types::ValidationError> {
    if !pair.certificate_chain.is_file() && !pair.private_key.is_file() {
        return Ok(());
    }
    let chain = pair
        .certificate_chain
        .load(&read_file, "certificate_chain")?;
    let key = pair.private_key.load(&read_file, "private_key")?;
    xds_types::tls::check_pair(&chain, &key)
}

fn check_ca_file(ca: &DataSource) -> Result<(), xds_types::ValidationError> {
    if !ca.is_file() {
        return Ok(());
    }
    let pem = ca.load(&read_file, "trusted_ca")?;
    xds_types::tls::check_certificates(&pem, "trusted_ca").map(|_| ())
}
