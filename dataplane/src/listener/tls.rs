//! TLS termination: a filter chain's `DownstreamTlsContext` compiled into a rustls
//! `ServerConfig` — its certificates (picked per handshake by SNI and by the signature
//! schemes the client offers, so one chain can serve RSA and ECDSA), ALPN, versions,
//! suites, session resumption, and client certificate verification with SAN matching.
//!
//! A config is compiled when its chain or a secret it uses changes; a handshake takes the
//! config current when the connection arrives, so a rotated certificate applies to the
//! next handshake and never touches established connections.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use xds_types::tls::{DownstreamTls, SanMatcher};

use crate::tls::{self, LoadedCertificate, Secrets, TlsError};

/// A compiled downstream TLS context.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    certificates: Arc<Certificates>,
    /// PEM-decoded trusted CAs, for `/certs`.
    pub ca_certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.certificates.loaded.len())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Compiles `tls` with the secrets it names.
    pub fn build(tls: &DownstreamTls, secrets: &Secrets<'_>) -> Result<Self, TlsError> {
        let provider = tls::provider(&tls.params);
        let loaded = tls
            .certificates
            .iter()
            .map(|source| tls::load_certificate(tls::certificate_pair(source, secrets)?, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let certificates = Arc::new(Certificates {
            loaded,
            require_sni: tls.require_sni,
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&tls::versions(&tls.params))
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut ca_certificates = Vec::new();
        let builder = match &tls.validation {
            None => builder.with_no_client_auth(),
            Some(source) => {
                let validation = tls::validation(source, secrets)?;
                let roots = validation.roots.ok_or_else(|| {
                    TlsError::Rustls(
                        "validation_context: a trusted_ca is needed to verify client certificates"
                            .into(),
                    )
                })?;
                ca_certificates = validation.ca_certificates;
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if !tls.require_client_certificate {
                    verifier = verifier.allow_unauthenticated();
                }
                let inner = verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(SanCheckingVerifier {
                    inner,
                    subject_alt_names: validation.subject_alt_names,
                }))
            }
        };
        let mut config = builder.with_cert_resolver(certificates.clone());
        config.alpn_protocols = tls
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        config.ignore_client_order = !tls.prefer_client_ciphers;
        config.session_storage = if tls.stateful_resumption {
            rustls::server::ServerSessionMemoryCache::new(4096)
        } else {
            Arc::new(rustls::server::NoServerSessionStorage {})
        };
        if tls.stateless_resumption {
            config.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
        }
        Ok(Self {
            config: Arc::new(config),
            certificates,
            ca_certificates,
        })
    }

    /// The URI SAN of the certificate served for `sni` (Envoy's `By=` in
    /// `x-forwarded-client-cert`).
    pub fn local_uri(&self, sni: Option<&str>) -> Option<String> {
        self.certificates
            .for_name(sni)
            .or_else(|| self.certificates.loaded.first())
            .and_then(|c| c.uri_names.first().cloned())
    }

    /// The served certificate chains, leaf first, for `/certs`.
    pub fn chains(&self) -> impl Iterator<Item = &[CertificateDer<'static>]> {
        self.certificates
            .loaded
            .iter()
            .map(|c| c.key.cert.as_slice())
    }
}

/// A chain's certificates, chosen per handshake.
#[derive(Debug)]
struct Certificates {
    loaded: Vec<LoadedCertificate>,
    require_sni: bool,
}

impl Certificates {
    /// The first certificate with a DNS SAN matching `sni`.
    fn for_name(&self, sni: Option<&str>) -> Option<&LoadedCertificate> {
        let sni = sni?;
        self.loaded
            .iter()
            .find(|c| c.dns_names.iter().any(|d| dns_matches(d, sni)))
    }
}

/// Whether a certificate's DNS name (exact or `*.suffix`, one label) covers `name`.
fn dns_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        if self.require_sni && sni.is_none() {
            return None;
        }
        let schemes = hello.signature_schemes();
        let usable = |c: &&LoadedCertificate| c.key.key.choose_scheme(schemes).is_some();
        let ecdsa = |c: &&LoadedCertificate| {
            c.key.key.algorithm() == rustls::SignatureAlgorithm::ECDSA && usable(c)
        };
        let named: Vec<&LoadedCertificate> = self
            .loaded
            .iter()
            .filter(|c| {
                sni.as_deref()
                    .is_some_and(|n| c.dns_names.iter().any(|d| dns_matches(d, n)))
            })
            .collect();
        // As Envoy: the certificates for the name (else all), ECDSA when the client can
        // verify it, else the first the client can use, else the first.
        let candidates: Vec<&LoadedCertificate> = if named.is_empty() {
            self.loaded.iter().collect()
        } else {
            named
        };
        candidates
            .iter()
            .find(|c| ecdsa(c))
            .or_else(|| candidates.iter().find(|c| usable(c)))
            .or_else(|| candidates.first())
            .map(|c| c.key.clone())
    }
}

/// Verifies client certificates against the CAs, then requires a SAN matcher to match.
#[derive(Debug)]
struct SanCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    subject_alt_names: Vec<SanMatcher>,
}

impl ClientCertVerifier for SanCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !tls::san_matches(end_entity, &self.subject_alt_names) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a finished handshake tells the request path.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain, leaf first (empty without mutual TLS).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The URI SAN of the certificate sluice served.
    pub local_uri: Option<String>,
}

impl TlsInfo {
    /// Reads what the request path needs from a finished server connection.
    pub fn of(connection: &rustls::ServerConnection, server: &ServerTls) -> Self {
        let sni = connection.server_name().map(str::to_string);
        Self {
            local_uri: server.local_uri(sni.as_deref()),
            sni,
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer_chain: connection
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_certificates_cover_one_label() {
        assert!(dns_matches("*.example.com", "www.example.com"));
        assert!(dns_matches("*.example.com", "WWW.Example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(dns_matches("api.example.com", "api.example.com"));
    }
}
