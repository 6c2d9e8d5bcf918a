//! Validated TLS contexts: `DownstreamTlsContext` (TLS termination on a filter chain) and
//! `UpstreamTlsContext` (TLS to a cluster's endpoints), as `envoy.transport_sockets.tls`
//! carries them.
//!
//! Certificates come inline, from files on the node, or by name over SDS. Inline PEM is
//! checked here; files are read by the data plane through [`DataSource::load`] when it
//! takes the config (so a missing file is an error naming the field, not a failed
//! handshake later). Private key bytes never appear in `Debug` output or errors.

use std::path::PathBuf;
use std::time::Duration;

use crate::config_source::{config_source, Origin};
use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use crate::route::{string_matcher, StringMatcher};
use crate::type_urls;
use crate::util::unpack_any;

/// Bytes from a config: inline, or a file on the node.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum DataSource {
    Inline(Vec<u8>),
    File(PathBuf),
}

impl std::fmt::Debug for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // May be a key: show only its size.
            Self::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            Self::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl DataSource {
    /// Converts an Envoy `DataSource` (`inline_string`, `inline_bytes` or `filename`).
    pub fn from_pb(source: Option<&core::DataSource>, path: &str) -> Result<Self> {
        use core::data_source::Specifier as S;
        match source.and_then(|s| s.specifier.as_ref()) {
            Some(S::InlineString(s)) if !s.is_empty() => Ok(Self::Inline(s.clone().into_bytes())),
            Some(S::InlineBytes(b)) if !b.is_empty() => Ok(Self::Inline(b.clone())),
            Some(S::Filename(f)) if !f.is_empty() => Ok(Self::File(PathBuf::from(f))),
            Some(S::EnvironmentVariable(_)) => Err(ValidationError::new(
                path,
                "environment_variable is not supported; use inline_string, inline_bytes or filename",
            )),
            _ => Err(ValidationError::required(path)),
        }
    }

    /// The bytes, reading a file through `read` (the caller's I/O).
    pub fn load(
        &self,
        read: &dyn Fn(&std::path::Path) -> std::io::Result<Vec<u8>>,
        path: &str,
    ) -> Result<Vec<u8>> {
        match self {
            Self::Inline(bytes) => Ok(bytes.clone()),
            Self::File(file) => read(file).map_err(|e| {
                ValidationError::new(path, format!("cannot read {}: {e}", file.display()))
            }),
        }
    }

    /// Whether the bytes live in a file.
    pub fn is_file(&self) -> bool {
        matches!(self, Self::File(_))
    }
}

/// A certificate chain and its private key, as PEM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificatePair {
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

/// A secret named by an `SdsSecretConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SdsRef {
    pub name: String,
    pub source: SecretSource,
}

/// Where a named secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// `static_resources.secrets` (an `SdsSecretConfig` without `sds_config`).
    Static,
    /// SDS, over ADS or an SDS stream of its own (never a file).
    Xds {
        origin: Origin,
        /// How long the listener or cluster warms waiting for it; `None` waits forever.
        initial_fetch_timeout: Option<Duration>,
    },
}

/// Where one certificate of a TLS context comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertificateSource {
    Static(CertificatePair),
    Sds(SdsRef),
}

/// How a peer's certificate is verified.
#[derive(Debug, Clone)]
pub struct ValidationContext {
    /// PEM CA bundle; `None` with SAN matchers only checks SANs after another verifier.
    pub trusted_ca: Option<DataSource>,
    /// The peer certificate must carry a SAN matching one of these (any), when non-empty.
    pub subject_alt_names: Vec<SanMatcher>,
}

/// Envoy's `SubjectAltNameMatcher`.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

/// Which SAN entries a [`SanMatcher`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    /// Any SAN entry (Envoy's deprecated `match_subject_alt_names`).
    Any,
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// Where a context's validation context comes from.
#[derive(Debug, Clone)]
pub enum ValidationSource {
    Static(ValidationContext),
    /// A `validation_context` secret over SDS.
    Sds(SdsRef),
    /// Envoy's combined form: the SDS secret's CA, with these defaults' SAN matchers.
    Combined {
        defaults: ValidationContext,
        sds: SdsRef,
    },
}

impl ValidationSource {
    /// The CA bundle it names in the config itself (not in a secret).
    pub fn static_ca(&self) -> Option<&DataSource> {
        match self {
            Self::Static(v) | Self::Combined { defaults: v, .. } => v.trusted_ca.as_ref(),
            Self::Sds(_) => None,
        }
    }

    /// The SDS secret it names, if any.
    pub fn sds(&self) -> Option<&SdsRef> {
        match self {
            Self::Static(_) => None,
            Self::Sds(s) | Self::Combined { sds: s, .. } => Some(s),
        }
    }
}

/// TLS protocol versions Sluice speaks; TLS 1.0 and 1.1 are refused at config time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// TLS 1.2 cipher suites rustls implements, by Envoy's (BoringSSL's) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    EcdheEcdsaAes128GcmSha256,
    EcdheRsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheRsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305,
    EcdheRsaChacha20Poly1305,
}

/// Key-exchange groups, by Envoy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcdhCurve {
    X25519,
    P256,
    P384,
}

/// `tls_params`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsParams {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty: rustls's defaults (the same AEAD set).
    pub cipher_suites: Vec<CipherSuite>,
    /// Empty: rustls's defaults.
    pub ecdh_curves: Vec<EcdhCurve>,
}

impl Default for TlsParams {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            ecdh_curves: Vec::new(),
        }
    }
}

/// TLS termination on a filter chain (`DownstreamTlsContext`).
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    /// Offered certificates (picked per handshake by SNI and key type).
    pub certificates: Vec<CertificateSource>,
    pub params: TlsParams,
    /// ALPN protocols offered, in preference order (`h2`, `http/1.1`).
    pub alpn_protocols: Vec<String>,
    pub validation: Option<ValidationSource>,
    /// Without it a client certificate is optional (checked when presented).
    pub require_client_certificate: bool,
    /// A handshake without SNI fails.
    pub require_sni: bool,
    pub stateless_resumption: bool,
    pub stateful_resumption: bool,
    /// Use the client's cipher order instead of the server's.
    pub prefer_client_ciphers: bool,
    /// Hash of the context's proto, to tell an unchanged context across updates.
    pub fingerprint: u64,
}

/// TLS to a cluster's endpoints (`UpstreamTlsContext`).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// SNI sent, and the name the certificate is checked against; `None`: the endpoint's
    /// address is the name checked and no SNI is sent for an IP.
    pub sni: Option<String>,
    /// At most one: the client certificate for mutual TLS.
    pub client_certificate: Option<CertificateSource>,
    /// `None`: the server's certificate is not verified (Envoy's behaviour without a
    /// validation context).
    pub validation: Option<ValidationSource>,
    pub params: TlsParams,
    /// ALPN offered; empty: decided by the cluster's HTTP protocol options.
    pub alpn_protocols: Vec<String>,
    /// SNI from the downstream request's host (`auto_host_sni`, or the cluster's
    /// `upstream_http_protocol_options.auto_sni`).
    pub auto_sni: bool,
    /// Check the certificate against that SNI (`auto_sni_san_validation` /
    /// `auto_san_validation`).
    pub auto_san_validation: bool,
    pub fingerprint: u64,
}

impl DownstreamTls {
    /// The CA bundle named in the context itself.
    pub fn validation_files(&self) -> Vec<&DataSource> {
        self.validation
            .iter()
            .filter_map(|v| v.static_ca())
            .collect()
    }

    /// The SDS secrets the context names.
    pub fn sds_names(&self) -> impl Iterator<Item = &SdsRef> {
        self.certificates
            .iter()
            .filter_map(|c| match c {
                CertificateSource::Sds(s) => Some(s),
                CertificateSource::Static(_) => None,
            })
            .chain(self.validation.as_ref().and_then(|v| v.sds()))
    }
}

impl UpstreamTls {
    /// The CA bundle named in the context itself.
    pub fn validation_files(&self) -> Vec<&DataSource> {
        self.validation
            .iter()
            .filter_map(|v| v.static_ca())
            .collect()
    }

    /// The SDS secrets the context names.
    pub fn sds_names(&self) -> impl Iterator<Item = &SdsRef> {
        self.client_certificate
            .iter()
            .filter_map(|c| match c {
                CertificateSource::Sds(s) => Some(s),
                CertificateSource::Static(_) => None,
            })
            .chain(self.validation.as_ref().and_then(|v| v.sds()))
    }
}

/// Name of the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The `DownstreamTlsContext` of a filter chain's `transport_socket`.
pub fn downstream(socket: &core::TransportSocket) -> Result<DownstreamTls> {
    let any = typed_config(socket)?;
    let context: pb::DownstreamTlsContext =
        unpack_any(any, type_urls::DOWNSTREAM_TLS_CONTEXT, "typed_config")?;
    let at = "typed_config";
    let common = context.common_tls_context.clone().unwrap_or_default();
    let common_path = format!("{at}.common_tls_context");
    let certificates = certificates(&common, &common_path)?;
    if certificates.is_empty() {
        return Err(ValidationError::new(
            format!("{common_path}.tls_certificates"),
            "a TLS listener needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
        ));
    }
    let validation = validation(&common, &common_path)?;
    let require_client_certificate = context
        .require_client_certificate
        .as_ref()
        .is_some_and(|v| v.value);
    if require_client_certificate && validation.is_none() {
        return Err(ValidationError::new(
            format!("{at}.require_client_certificate"),
            "needs a validation_context with trusted_ca to verify client certificates",
        ));
    }
    use pb::downstream_tls_context::SessionTicketKeysType as T;
    let stateless_resumption = match &context.session_ticket_keys_type {
        None => true,
        Some(T::DisableStatelessSessionResumption(disabled)) => !disabled,
        Some(_) => {
            return Err(ValidationError::new(
                format!("{at}.session_ticket_keys"),
                "session ticket keys are not supported (sluice generates and rotates its own)",
            ))
        }
    };
    if context.ocsp_staple_policy
        != pb::downstream_tls_context::OcspStaplePolicy::LenientStapling as i32
    {
        return Err(ValidationError::new(
            format!("{at}.ocsp_staple_policy"),
            "OCSP stapling is not supported; only LENIENT_STAPLING (no staple) is accepted",
        ));
    }
    Ok(DownstreamTls {
        certificates,
        params: params(
            common.tls_params.as_ref(),
            &format!("{common_path}.tls_params"),
        )?,
        alpn_protocols: common.alpn_protocols.clone(),
        validation,
        require_client_certificate,
        require_sni: context.require_sni.as_ref().is_some_and(|v| v.value),
        stateless_resumption,
        stateful_resumption: !context.disable_stateful_session_resumption,
        prefer_client_ciphers: context.prefer_client_ciphers,
        fingerprint: fingerprint(any),
    })
}

/// The `UpstreamTlsContext` of a cluster's `transport_socket`.
pub fn upstream(socket: &core::TransportSocket) -> Result<UpstreamTls> {
    let any = typed_config(socket)?;
    let context: pb::UpstreamTlsContext =
        unpack_any(any, type_urls::UPSTREAM_TLS_CONTEXT, "typed_config")?;
    let at = "typed_config";
    let common = context.common_tls_context.clone().unwrap_or_default();
    let common_path = format!("{at}.common_tls_context");
    let mut certificates = certificates(&common, &common_path)?;
    if certificates.len() > 1 {
        return Err(ValidationError::new(
            format!("{common_path}.tls_certificates"),
            "at most one client certificate",
        ));
    }
    if context.allow_renegotiation {
        return Err(ValidationError::new(
            format!("{at}.allow_renegotiation"),
            "TLS renegotiation is not supported (rustls never renegotiates)",
        ));
    }
    Ok(UpstreamTls {
        sni: (!context.sni.is_empty()).then(|| context.sni.clone()),
        client_certificate: certificates.pop(),
        validation: validation(&common, &common_path)?,
        params: params(
            common.tls_params.as_ref(),
            &format!("{common_path}.tls_params"),
        )?,
        alpn_protocols: common.alpn_protocols.clone(),
        auto_sni: context.auto_host_sni,
        auto_san_validation: context.auto_sni_san_validation,
        fingerprint: fingerprint(any),
    })
}

fn typed_config(socket: &core::TransportSocket) -> Result<&crate::pb::google::protobuf::Any> {
    if !socket.name.is_empty() && socket.name != TLS_TRANSPORT_SOCKET {
        return Err(ValidationError::new(
            "name",
            format!(
                "transport socket {:?} is not supported (only {TLS_TRANSPORT_SOCKET})",
                socket.name
            ),
        ));
    }
    match socket.config_type.as_ref() {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => Ok(any),
        None => Err(ValidationError::required("typed_config")),
    }
}

fn fingerprint(any: &crate::pb::google::protobuf::Any) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut hasher);
    hasher.finish()
}

fn certificates(common: &pb::CommonTlsContext, path: &str) -> Result<Vec<CertificateSource>> {
    let mut out = Vec::new();
    for (i, c) in common.tls_certificates.iter().enumerate() {
        let at = format!("{path}.tls_certificates[{i}]");
        out.push(CertificateSource::Static(
            certificate_pair(c).map_err(|e| e.within(&at))?,
        ));
    }
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        let at = format!("{path}.tls_certificate_sds_secret_configs[{i}]");
        out.push(CertificateSource::Sds(
            sds_ref(s).map_err(|e| e.within(&at))?,
        ));
    }
    Ok(out)
}

/// A `TlsCertificate` with a chain and a key (inline or files).
pub fn certificate_pair(c: &pb::TlsCertificate) -> Result<CertificatePair> {
    let pair = CertificatePair {
        certificate_chain: DataSource::from_pb(c.certificate_chain.as_ref(), "certificate_chain")?,
        private_key: DataSource::from_pb(c.private_key.as_ref(), "private_key")?,
    };
    if let (DataSource::Inline(chain), DataSource::Inline(key)) =
        (&pair.certificate_chain, &pair.private_key)
    {
        check_pair(chain, key)?;
    }
    Ok(pair)
}

fn sds_ref(s: &pb::SdsSecretConfig) -> Result<SdsRef> {
    if s.name.is_empty() {
        return Err(ValidationError::required("name"));
    }
    let source = match s.sds_config.as_ref() {
        None => SecretSource::Static,
        Some(config) => {
            let source = config_source(config, "sds_config", false)?;
            SecretSource::Xds {
                origin: source.origin,
                initial_fetch_timeout: source.initial_fetch_timeout,
            }
        }
    };
    Ok(SdsRef {
        name: s.name.clone(),
        source,
    })
}

fn validation(common: &pb::CommonTlsContext, path: &str) -> Result<Option<ValidationSource>> {
    use pb::common_tls_context::ValidationContextType as V;
    Ok(match common.validation_context_type.as_ref() {
        None => None,
        Some(V::ValidationContext(v)) => Some(ValidationSource::Static(
            validation_context(v).map_err(|e| e.within(format!("{path}.validation_context")))?,
        )),
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            Some(ValidationSource::Sds(sds_ref(s).map_err(|e| {
                e.within(format!("{path}.validation_context_sds_secret_config"))
            })?))
        }
        Some(V::CombinedValidationContext(c)) => {
            let at = format!("{path}.combined_validation_context");
            let defaults = match c.default_validation_context.as_ref() {
                // The SDS secret may bring the CA: the defaults can be empty, as Istio sends.
                Some(v) => validation_settings(v)
                    .map_err(|e| e.within(format!("{at}.default_validation_context")))?,
                None => ValidationContext {
                    trusted_ca: None,
                    subject_alt_names: Vec::new(),
                },
            };
            let sds = c
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    ValidationError::required(format!("{at}.validation_context_sds_secret_config"))
                })?;
            Some(ValidationSource::Combined {
                defaults,
                sds: sds_ref(sds)
                    .map_err(|e| e.within(format!("{at}.validation_context_sds_secret_config")))?,
            })
        }
        Some(_) => {
            return Err(ValidationError::new(
                path,
                "certificate providers are not supported; use validation_context or SDS",
            ))
        }
    })
}

/// A `CertificateValidationContext` (inline, or as an SDS secret's content).
pub fn validation_context(v: &pb::CertificateValidationContext) -> Result<ValidationContext> {
    let context = validation_settings(v)?;
    if context.trusted_ca.is_none() && context.subject_alt_names.is_empty() {
        return Err(ValidationError::required("trusted_ca"));
    }
    Ok(context)
}

/// A validation context that may be empty (the defaults of a combined one).
fn validation_settings(v: &pb::CertificateValidationContext) -> Result<ValidationContext> {
    let trusted_ca = match v.trusted_ca.as_ref() {
        None => None,
        Some(source) => {
            let ca = DataSource::from_pb(Some(source), "trusted_ca")?;
            if let DataSource::Inline(pem) = &ca {
                check_certificates(pem, "trusted_ca")?;
            }
            Some(ca)
        }
    };
    if v.trust_chain_verification
        != pb::certificate_validation_context::TrustChainVerification::VerifyTrustChain as i32
    {
        return Err(ValidationError::new(
            "trust_chain_verification",
            "only VERIFY_TRUST_CHAIN is supported",
        ));
    }
    let mut subject_alt_names = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            san_matcher(m).map_err(|e| e.within(format!("match_typed_subject_alt_names[{i}]")))
        })
        .collect::<Result<Vec<_>>>()?;
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        subject_alt_names.push(SanMatcher {
            san_type: SanType::Any,
            matcher: string_matcher(m)
                .map_err(|e| e.within(format!("match_subject_alt_names[{i}]")))?,
        });
    }
    Ok(ValidationContext {
        trusted_ca,
        subject_alt_names,
    })
}

fn san_matcher(m: &pb::SubjectAltNameMatcher) -> Result<SanMatcher> {
    use pb::subject_alt_name_matcher::SanType as T;
    let san_type = match T::try_from(m.san_type) {
        Ok(T::Dns) => SanType::Dns,
        Ok(T::Uri) => SanType::Uri,
        Ok(T::Email) => SanType::Email,
        Ok(T::IpAddress) => SanType::IpAddress,
        _ => {
            return Err(ValidationError::new(
                "san_type",
                "one of DNS, URI, EMAIL or IP_ADDRESS is required",
            ))
        }
    };
    let matcher = m
        .matcher
        .as_ref()
        .ok_or_else(|| ValidationError::required("matcher"))?;
    Ok(SanMatcher {
        san_type,
        matcher: string_matcher(matcher).map_err(|e| e.within("matcher"))?,
    })
}

/// Envoy's TLS 1.2 cipher names that rustls does not implement (CBC, RSA key exchange,
/// 3DES): listed in Envoy's own defaults, so accepted, and never offered.
const NOT_OFFERED_CIPHERS: &[&str] = &[
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "DES-CBC3-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
];

/// TLS 1.3 suites: always on, not configurable (as in Envoy).
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

fn cipher(name: &str) -> Option<CipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => CipherSuite::EcdheEcdsaAes128GcmSha256,
        "ECDHE-RSA-AES128-GCM-SHA256" => CipherSuite::EcdheRsaAes128GcmSha256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => CipherSuite::EcdheEcdsaAes256GcmSha384,
        "ECDHE-RSA-AES256-GCM-SHA384" => CipherSuite::EcdheRsaAes256GcmSha384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => CipherSuite::EcdheEcdsaChacha20Poly1305,
        "ECDHE-RSA-CHACHA20-POLY1305" => CipherSuite::EcdheRsaChacha20Poly1305,
        _ => return None,
    })
}

/// `tls_params`: versions (TLS 1.2 and 1.3 only), cipher suites and curves by Envoy's names.
pub fn params(p: Option<&pb::TlsParameters>, path: &str) -> Result<TlsParams> {
    use pb::tls_parameters::TlsProtocol as V;
    let Some(p) = p else {
        return Ok(TlsParams::default());
    };
    let version = |value: i32, field: &str, default: TlsVersion| -> Result<TlsVersion> {
        match V::try_from(value) {
            Ok(V::TlsAuto) => Ok(default),
            Ok(V::TlSv12) => Ok(TlsVersion::Tls12),
            Ok(V::TlSv13) => Ok(TlsVersion::Tls13),
            Ok(V::TlSv10 | V::TlSv11) => Err(ValidationError::new(
                format!("{path}.{field}"),
                "TLS 1.0 and 1.1 are insecure and not supported; use TLSv1_2 or TLSv1_3",
            )),
            Err(_) => Err(ValidationError::new(
                format!("{path}.{field}"),
                "unknown TLS version",
            )),
        }
    };
    let min_version = version(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
        TlsVersion::Tls12,
    )?;
    let max_version = version(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
        TlsVersion::Tls13,
    )?;
    if min_version > max_version {
        return Err(ValidationError::new(
            format!("{path}.tls_minimum_protocol_version"),
            "is above tls_maximum_protocol_version",
        ));
    }
    let mut cipher_suites = Vec::new();
    for (i, entry) in p.cipher_suites.iter().enumerate() {
        // `[A|B]` is an equal-preference group: taken in the order written.
        for name in entry.trim_matches(|c| c == '[' || c == ']').split('|') {
            let name = name.trim();
            match cipher(name) {
                Some(suite) if !cipher_suites.contains(&suite) => cipher_suites.push(suite),
                Some(_) => {}
                None if NOT_OFFERED_CIPHERS.contains(&name) || TLS13_SUITES.contains(&name) => {}
                None => {
                    return Err(ValidationError::new(
                        format!("{path}.cipher_suites[{i}]"),
                        format!("unknown cipher suite {name:?}"),
                    ))
                }
            }
        }
    }
    if !p.cipher_suites.is_empty() && cipher_suites.is_empty() && min_version == TlsVersion::Tls12 {
        return Err(ValidationError::new(
            format!("{path}.cipher_suites"),
            "none of these TLS 1.2 suites is supported (sluice offers only ECDHE with AES-GCM or ChaCha20-Poly1305)",
        ));
    }
    let mut ecdh_curves = Vec::new();
    for (i, name) in p.ecdh_curves.iter().enumerate() {
        let curve = match name.as_str() {
            "X25519" => EcdhCurve::X25519,
            "P-256" | "prime256v1" => EcdhCurve::P256,
            "P-384" | "secp384r1" => EcdhCurve::P384,
            other => {
                return Err(ValidationError::new(
                    format!("{path}.ecdh_curves[{i}]"),
                    format!("curve {other:?} is not supported (X25519, P-256, P-384)"),
                ))
            }
        };
        if !ecdh_curves.contains(&curve) {
            ecdh_curves.push(curve);
        }
    }
    Ok(TlsParams {
        min_version,
        max_version,
        cipher_suites,
        ecdh_curves,
    })
}

/// Checks PEM certificates parse; returns how many there are.
pub fn check_certificates(pem: &[u8], path: &str) -> Result<usize> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ValidationError::new(path, format!("not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(ValidationError::new(path, "no PEM certificate"));
    }
    Ok(certificates.len())
}

/// Checks a PEM chain and key: both parse, the key is one rustls can sign with, and it
/// belongs to the chain's first certificate. Never echoes the key.
pub fn check_pair(chain: &[u8], key: &[u8]) -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    check_certificates(chain, "certificate_chain")?;
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ValidationError::new("certificate_chain", format!("not PEM: {e}")))?;
    let bad_key = || {
        ValidationError::new(
            "private_key",
            "not a PEM private key (keys read back from sluice-cp are redacted; apply the original)",
        )
    };
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| bad_key())?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|_| {
        ValidationError::new(
            "private_key",
            "unsupported key type (RSA, ECDSA P-256/P-384 or Ed25519)",
        )
    })?;
    let certified = rustls::sign::CertifiedKey::new(certificates, signing);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(ValidationError::new(
                "private_key",
                "does not match the first certificate of certificate_chain",
            ))
        }
        // Anything else could not be compared: a key rustls cannot describe (no SPKI), or a
        // certificate webpki does not parse (an X.509 v1 certificate, as `openssl x509 -req`
        // makes without extensions; BoringSSL serves it, and so do we).
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_key_must_belong_to_its_certificate() {
        let (chain, key) = pem_pair("a.example");
        check_pair(chain.as_bytes(), key.as_bytes()).unwrap();
        let (_, other_key) = pem_pair("b.example");
        let err = check_pair(chain.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert_eq!(err.path, "private_key");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn old_tls_versions_and_unknown_ciphers_are_refused_envoy_defaults_load() {
        let p = |json: serde_json::Value| {
            let pb: pb::TlsParameters = crate::decode::from_json_value(
                json,
                "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
            )
            .unwrap();
            params(Some(&pb), "tls_params")
        };
        let err = p(serde_json::json!({ "tls_minimum_protocol_version": "TLSv1_0" })).unwrap_err();
        assert_eq!(err.path, "tls_params.tls_minimum_protocol_version");
        let err =
            p(serde_json::json!({ "cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256", "RC4-MD5"] }))
                .unwrap_err();
        assert_eq!(err.path, "tls_params.cipher_suites[1]");
        // Envoy's documented default list: its CBC and RSA suites are accepted, not offered.
        let ok = p(serde_json::json!({ "cipher_suites": [
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
            "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
            "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256", "AES128-SHA",
            "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "AES256-GCM-SHA384", "AES256-SHA"
        ] }))
        .unwrap();
        assert_eq!(ok.cipher_suites.len(), 6);
        assert_eq!(ok.cipher_suites[0], CipherSuite::EcdheEcdsaAes128GcmSha256);
        let err = p(serde_json::json!({ "cipher_suites": ["AES128-SHA"] })).unwrap_err();
        assert_eq!(err.path, "tls_params.cipher_suites");
    }

    #[test]
    fn debug_output_never_shows_inline_bytes() {
        let (_, key) = pem_pair("a.example");
        let shown = format!("{:?}", DataSource::Inline(key.into_bytes()));
        assert!(
            shown.starts_with("Inline(") && !shown.contains("KEY"),
            "{shown}"
        );
    }
}
