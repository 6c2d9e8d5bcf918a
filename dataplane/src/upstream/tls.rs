//! TLS to a cluster's endpoints (`UpstreamTlsContext`) and the connector every cluster's
//! pool and the TCP proxy connect with.
//!
//! Verification follows Envoy: without a validation context the server's certificate is
//! not checked; with one, the chain must lead to its CAs, and its SAN matchers (or, with
//! `auto_sni_san_validation`, the SNI) must match. The configured `sni` is only sent, as in
//! Envoy. A failed handshake is a connect failure (`UF`, retryable by `connect-failure`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use xds_types::cluster::UpstreamProtocol;
use xds_types::tls::{SanMatcher, UpstreamTls};

use crate::tls::{self, Secrets, TlsError};

/// A compiled upstream TLS context.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The configured `sni`; `None`: the endpoint's host (or the request's, with auto SNI).
    sni: Option<ServerName<'static>>,
    pub auto_sni: bool,
    /// The client certificate and the trusted CAs, for `/certs`.
    pub client_chain: Vec<CertificateDer<'static>>,
    pub ca_certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Compiles `tls` for a cluster speaking `protocol`.
    pub fn build(
        tls: &UpstreamTls,
        protocol: UpstreamProtocol,
        secrets: &Secrets<'_>,
    ) -> Result<Self, TlsError> {
        let provider = tls::provider(&tls.params);
        let validation = tls
            .validation
            .as_ref()
            .map(|v| tls::validation(v, secrets))
            .transpose()?;
        let ca_certificates = validation
            .as_ref()
            .map(|v| v.ca_certificates.clone())
            .unwrap_or_default();
        let verifier = Arc::new(EnvoyVerifier {
            roots: validation.as_ref().and_then(|v| v.roots.clone()),
            subject_alt_names: validation.map(|v| v.subject_alt_names).unwrap_or_default(),
            check_name: tls.auto_san_validation,
            provider: provider.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&tls::versions(&tls.params))
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let (mut config, client_chain) = match &tls.client_certificate {
            None => (builder.with_no_client_auth(), Vec::new()),
            Some(source) => {
                let loaded =
                    tls::load_certificate(tls::certificate_pair(source, secrets)?, &provider)?;
                let chain = loaded.key.cert.clone();
                let resolver = Arc::new(FixedClientCert(loaded.key));
                (builder.with_client_cert_resolver(resolver), chain)
            }
        };
        config.alpn_protocols = if tls.alpn_protocols.is_empty() {
            match protocol {
                // Validation keeps the downstream's protocol to plaintext clusters.
                UpstreamProtocol::Http1 | UpstreamProtocol::Downstream => {
                    vec![b"http/1.1".to_vec()]
                }
                UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
                UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            }
        } else {
            tls.alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        };
        let sni = match &tls.sni {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                TlsError::Rustls(format!("sni: {name:?} is not a DNS name or IP address"))
            })?),
        };
        Ok(Self {
            config: Arc::new(config),
            sni,
            auto_sni: tls.auto_sni,
            client_chain,
            ca_certificates,
        })
    }

    /// The name to send: the configured SNI, else `host` (the request's, with auto SNI,
    /// or the endpoint's).
    fn server_name(&self, host: &str) -> io::Result<ServerName<'static>> {
        if let Some(sni) = &self.sni {
            return Ok(sni.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid TLS server name"))
    }
}

/// Always presents the one configured client certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Envoy's upstream certificate check (see the module docs).
#[derive(Debug)]
struct EnvoyVerifier {
    roots: Option<Arc<rustls::RootCertStore>>,
    subject_alt_names: Vec<SanMatcher>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EnvoyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_name {
                rustls::client::verify_server_name(&parsed, server_name)?;
            }
        }
        if !tls::san_matches(end_entity, &self.subject_alt_names) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection to an endpoint: plain TCP, TLS over it, or a Unix socket.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(tokio_rustls::client::TlsStream<TcpStream>),
    Unix(UnixStream),
}

impl UpstreamStream {
    /// Whether TLS negotiated HTTP/2 by ALPN.
    pub fn negotiated_h2(&self) -> bool {
        match self {
            Self::Plain(_) | Self::Unix(_) => false,
            Self::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How a cluster's connections are made.
#[derive(Clone, Debug)]
pub enum Transport {
    Plaintext,
    Tls(ClientTls),
    /// A secret the cluster's TLS needs did not arrive in time: every connect fails (it
    /// is never made in plaintext).
    Unavailable(Arc<str>),
}

impl Transport {
    /// The TLS context, when there is one.
    pub fn tls(&self) -> Option<&ClientTls> {
        match self {
            Self::Tls(t) => Some(t),
            Self::Plaintext | Self::Unavailable(_) => None,
        }
    }
}

/// Connects to `authority` (`host:port`) within `timeout` over `transport`, sending
/// `sni_host` (or the authority's host) as the server name.
pub async fn connect(
    authority: &str,
    timeout: Duration,
    transport: &Transport,
    sni_host: Option<&str>,
) -> io::Result<UpstreamStream> {
    let tls = match transport {
        Transport::Plaintext => None,
        Transport::Tls(tls) => Some(tls),
        Transport::Unavailable(reason) => {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                reason.to_string(),
            ))
        }
    };
    if let Some(path) = unix_path(authority) {
        if tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS over a Unix socket is not supported",
            ));
        }
        return tokio::time::timeout(timeout, connect_unix(path))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))?
            .map(UpstreamStream::Unix);
    }
    let connect = async {
        let tcp = TcpStream::connect(authority).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let host = sni_host.unwrap_or_else(|| host_of(authority));
        let name = tls.server_name(host)?;
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await?;
        Ok(UpstreamStream::Tls(stream))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))?
}

/// How a host that listens on a Unix socket is keyed: `unix:` and its path, which no
/// `host:port` can be.
pub const UNIX_PREFIX: &str = "unix:";

/// The socket path of a `unix:` authority.
pub fn unix_path(authority: &str) -> Option<&str> {
    authority.strip_prefix(UNIX_PREFIX)
}

/// Connects to a Unix socket: a path, or `@name` in Linux's abstract namespace (as Envoy
/// spells it).
pub async fn connect_unix(path: &str) -> io::Result<UnixStream> {
    let Some(name) = path.strip_prefix('@') else {
        return UnixStream::connect(path).await;
    };
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    // A local connect completes at once or fails; it does not block on the network.
    let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}
