//! The listener filters: what they learn from a new connection's first bytes before a
//! filter chain is chosen — the PROXY protocol header (consumed), the TLS ClientHello's
//! SNI and ALPN, or plaintext HTTP's version (both only looked at). Bytes read while
//! looking are replayed to whatever takes the connection ([`Prefixed`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use xds_types::filter_chain::{RAW_BUFFER, TLS};
use xds_types::listener::{ListenerFilter, ProxyProtocol};

/// Largest ClientHello read (Envoy's default `max_client_hello_size`).
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// Longest HTTP/1 request line looked at.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The PROXY protocol v2 signature.
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const PROXY_V1_PREFIX: &[u8] = b"PROXY ";
/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the listener filters learned.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The downstream address: the PROXY header's source, else the peer.
    pub source: SocketAddr,
    /// The destination: the PROXY header's, else the local address.
    pub destination: SocketAddr,
    pub server_name: Option<String>,
    pub transport: &'static str,
    pub application_protocols: Vec<String>,
}

/// Why inspection closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("listener filters timed out")]
    Timeout,
    #[error("connection closed during listener filters")]
    Closed,
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("PROXY protocol: {0}")]
    ProxyProtocol(String),
    #[error("invalid TLS ClientHello")]
    ClientHello,
}

/// Where one filter stands with the bytes so far.
enum Step {
    Done,
    NeedMore,
}

/// Runs `filters` in order over the connection's first bytes; returns what they learned
/// and the bytes read, to replay.
pub async fn inspect(
    stream: &mut TcpStream,
    filters: &[ListenerFilter],
    peer: SocketAddr,
    local: SocketAddr,
    timeout: Option<Duration>,
    continue_on_timeout: bool,
) -> Result<(Inspected, BytesMut), InspectError> {
    let mut state = Inspected {
        source: peer,
        destination: local,
        server_name: None,
        transport: RAW_BUFFER,
        application_protocols: Vec::new(),
    };
    let mut buffer = BytesMut::new();
    if filters.is_empty() {
        return Ok((state, buffer));
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut current = 0;
    let mut eof = false;
    while current < filters.len() {
        match step(&filters[current], &mut buffer, &mut state, eof)? {
            Step::Done => current += 1,
            Step::NeedMore => {
                buffer.reserve(4096);
                let read = stream.read_buf(&mut buffer);
                let n = match deadline {
                    None => read.await?,
                    Some(d) => match tokio::time::timeout_at(d, read).await {
                        Ok(n) => n?,
                        Err(_) if continue_on_timeout => break,
                        Err(_) => return Err(InspectError::Timeout),
                    },
                };
                if n == 0 {
                    if eof || buffer.is_empty() {
                        return Err(InspectError::Closed);
                    }
                    eof = true;
                }
            }
        }
    }
    Ok((state, buffer))
}

fn step(
    filter: &ListenerFilter,
    buffer: &mut BytesMut,
    state: &mut Inspected,
    eof: bool,
) -> Result<Step, InspectError> {
    match filter {
        ListenerFilter::ProxyProtocol(config) => proxy_protocol(config, buffer, state, eof),
        ListenerFilter::TlsInspector {
            close_on_parse_error,
        } => match client_hello(buffer) {
            Hello::NeedMore if !eof => Ok(Step::NeedMore),
            Hello::Parsed { sni, alpn } => {
                state.transport = TLS;
                state.server_name = sni.map(|s| s.to_ascii_lowercase());
                state.application_protocols = alpn;
                Ok(Step::Done)
            }
            Hello::Invalid if *close_on_parse_error => Err(InspectError::ClientHello),
            Hello::NotTls | Hello::Invalid | Hello::NeedMore => Ok(Step::Done),
        },
        ListenerFilter::HttpInspector => {
            if state.transport == TLS {
                return Ok(Step::Done);
            }
            match http_protocol(buffer) {
                Some(Some(protocol)) => {
                    state.application_protocols = vec![protocol.to_string()];
                    Ok(Step::Done)
                }
                None if !eof => Ok(Step::NeedMore),
                _ => Ok(Step::Done),
            }
        }
    }
}

/// Reads and removes a PROXY protocol header from the front of `buffer`.
fn proxy_protocol(
    config: &ProxyProtocol,
    buffer: &mut BytesMut,
    state: &mut Inspected,
    eof: bool,
) -> Result<Step, InspectError> {
    let could_be = |prefix: &[u8]| {
        let n = buffer.len().min(prefix.len());
        buffer[..n] == prefix[..n]
    };
    let (v1, v2) = (could_be(PROXY_V1_PREFIX), could_be(PROXY_V2_SIGNATURE));
    if !v1 && !v2 {
        return if config.allow_requests_without_proxy_protocol {
            Ok(Step::Done)
        } else {
            Err(InspectError::ProxyProtocol("no header".into()))
        };
    }
    if buffer.len() < PROXY_V1_PREFIX.len().min(PROXY_V2_SIGNATURE.len())
        || (v2 && buffer.len() < PROXY_V2_SIGNATURE.len())
    {
        return need_more(eof);
    }
    let version = if v2 { 2 } else { 1 };
    if config.disallowed_versions.contains(&version) {
        return Err(InspectError::ProxyProtocol(format!(
            "version {version} is not allowed"
        )));
    }
    use ppp::PartialResult;
    let parsed = ppp::HeaderResult::parse(buffer);
    if parsed.is_incomplete() {
        if buffer.len() > 16 + 65_535 {
            return Err(InspectError::ProxyProtocol("header too long".into()));
        }
        return need_more(eof);
    }
    let (length, addresses) = match parsed {
        ppp::HeaderResult::V1(Ok(header)) => {
            let addresses = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            (header.header.len(), addresses)
        }
        ppp::HeaderResult::V2(Ok(header)) => {
            let local = header.command == ppp::v2::Command::Local;
            let addresses = match header.addresses {
                ppp::v2::Addresses::IPv4(a) if !local => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v2::Addresses::IPv6(a) if !local => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                _ => None,
            };
            (header.len(), addresses)
        }
        ppp::HeaderResult::V1(Err(e)) => return Err(InspectError::ProxyProtocol(e.to_string())),
        ppp::HeaderResult::V2(Err(e)) => return Err(InspectError::ProxyProtocol(e.to_string())),
    };
    if let Some((source, destination)) = addresses {
        state.source = source;
        state.destination = destination;
    }
    buffer.advance(length);
    Ok(Step::Done)
}

fn need_more(eof: bool) -> Result<Step, InspectError> {
    if eof {
        Err(InspectError::ProxyProtocol("truncated header".into()))
    } else {
        Ok(Step::NeedMore)
    }
}

/// What the bytes say about a TLS ClientHello.
#[derive(Debug, PartialEq, Eq)]
enum Hello {
    NotTls,
    NeedMore,
    Invalid,
    Parsed {
        sni: Option<String>,
        alpn: Vec<String>,
    },
}

/// Looks for a ClientHello at the front of `buffer`, reassembling a handshake message
/// that spans several records.
fn client_hello(buffer: &[u8]) -> Hello {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    if buffer.is_empty() {
        return Hello::NeedMore;
    }
    if buffer[0] != HANDSHAKE {
        return Hello::NotTls;
    }
    let mut message = Vec::new();
    let mut at = 0;
    loop {
        if buffer.len() < at + 5 {
            return Hello::NeedMore;
        }
        if buffer[at] != HANDSHAKE || buffer[at + 1] != 3 {
            return Hello::Invalid;
        }
        let length = usize::from(u16::from_be_bytes([buffer[at + 3], buffer[at + 4]]));
        if buffer.len() < at + 5 + length {
            return if at + 5 + length > MAX_CLIENT_HELLO + 5 * 16 {
                Hello::Invalid
            } else {
                Hello::NeedMore
            };
        }
        message.extend_from_slice(&buffer[at + 5..at + 5 + length]);
        at += 5 + length;
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Hello::Invalid;
            }
            let body = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if body > MAX_CLIENT_HELLO {
                return Hello::Invalid;
            }
            if message.len() >= 4 + body {
                return parse_client_hello(&message[4..4 + body]);
            }
        }
    }
}

fn parse_client_hello(body: &[u8]) -> Hello {
    use tls_parser::{
        parse_tls_client_hello_extensions, parse_tls_handshake_client_hello, TlsExtension,
    };
    let Ok((_, hello)) = parse_tls_handshake_client_hello(body) else {
        return Hello::Invalid;
    };
    let mut sni = None;
    let mut alpn = Vec::new();
    if let Some(ext) = hello.ext {
        let Ok((_, extensions)) = parse_tls_client_hello_extensions(ext) else {
            return Hello::Invalid;
        };
        for extension in extensions {
            match extension {
                TlsExtension::SNI(names) => {
                    sni = names
                        .iter()
                        .find(|(t, _)| t.0 == 0)
                        .and_then(|(_, n)| std::str::from_utf8(n).ok())
                        .map(str::to_string);
                }
                TlsExtension::ALPN(protocols) => {
                    alpn = protocols
                        .iter()
                        .filter_map(|p| std::str::from_utf8(p).ok())
                        .map(str::to_string)
                        .collect();
                }
                _ => {}
            }
        }
    }
    Hello::Parsed { sni, alpn }
}

/// `Some(Some(protocol))` for plaintext HTTP (`http/1.0`, `http/1.1`, `h2c`),
/// `Some(None)` for something else, `None` when more bytes are needed.
fn http_protocol(buffer: &[u8]) -> Option<Option<&'static str>> {
    let n = buffer.len().min(H2_PREFACE.len());
    if buffer[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Some("h2c"))
        } else {
            None
        };
    }
    let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
        let plausible = buffer
            .iter()
            .take_while(|b| **b != b' ')
            .all(|b| b.is_ascii_uppercase());
        return if plausible && buffer.len() < MAX_REQUEST_LINE {
            None
        } else {
            Some(None)
        };
    };
    let line = &buffer[..end];
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(None);
    };
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Some(None);
    }
    Some(match version {
        b"HTTP/1.1" => Some("http/1.1"),
        b"HTTP/1.0" => Some("http/1.0"),
        _ => None,
    })
}

pin_project_lite::pin_project! {
    /// A stream that yields `prefix` (bytes the listener filters read) before the rest.
    pub struct Prefixed<S> {
        prefix: BytesMut,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name` and `alpn`.
    fn hello_bytes(name: &str, alpn: &[&str]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        roots.add(cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    use std::sync::Arc;

    #[test]
    fn a_client_hello_yields_sni_and_alpn_even_split_across_reads() {
        let bytes = hello_bytes("API.example.com", &["h2", "http/1.1"]);
        for cut in [1, 5, 20, bytes.len() - 1] {
            assert_eq!(client_hello(&bytes[..cut]), Hello::NeedMore, "cut at {cut}");
        }
        assert_eq!(
            client_hello(&bytes),
            // As sent; the step lowercases it for matching.
            Hello::Parsed {
                sni: Some("API.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            }
        );
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(&[22, 3, 1, 0, 4, 9, 0, 0, 0]), Hello::Invalid);
    }

    #[test]
    fn http_versions_and_the_h2_preface() {
        assert_eq!(
            http_protocol(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Some("http/1.1"))
        );
        assert_eq!(
            http_protocol(b"POST /x HTTP/1.0\r\n"),
            Some(Some("http/1.0"))
        );
        assert_eq!(http_protocol(H2_PREFACE), Some(Some("h2c")));
        assert_eq!(http_protocol(&H2_PREFACE[..10]), None);
        assert_eq!(http_protocol(b"GET / HT"), None);
        assert_eq!(http_protocol(b"\x16\x03\x01"), Some(None));
        assert_eq!(http_protocol(b"SSH-2.0-OpenSSH\r\n"), Some(None));
    }

    fn state() -> Inspected {
        Inspected {
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
            server_name: None,
            transport: RAW_BUFFER,
            application_protocols: Vec::new(),
        }
    }

    #[test]
    fn proxy_protocol_v1_and_v2_set_the_addresses_and_are_consumed() {
        let config = ProxyProtocol {
            allow_requests_without_proxy_protocol: false,
            disallowed_versions: Vec::new(),
        };
        let mut s = state();
        let mut buffer =
            BytesMut::from(&b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\nGET /"[..]);
        assert!(matches!(
            proxy_protocol(&config, &mut buffer, &mut s, false),
            Ok(Step::Done)
        ));
        assert_eq!(s.source, "192.0.2.1:5000".parse().unwrap());
        assert_eq!(s.destination, "198.51.100.2:443".parse().unwrap());
        assert_eq!(&buffer[..], b"GET /");

        let mut v2 = PROXY_V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        v2.extend_from_slice(b"rest");
        let mut s = state();
        let mut partial = BytesMut::from(&v2[..14]);
        assert!(matches!(
            proxy_protocol(&config, &mut partial, &mut s, false),
            Ok(Step::NeedMore)
        ));
        let mut buffer = BytesMut::from(&v2[..]);
        assert!(matches!(
            proxy_protocol(&config, &mut buffer, &mut s, false),
            Ok(Step::Done)
        ));
        assert_eq!(s.source, "203.0.113.7:8080".parse().unwrap());
        assert_eq!(&buffer[..], b"rest");

        let mut plain = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(proxy_protocol(&config, &mut plain, &mut state(), false).is_err());
        let allowing = ProxyProtocol {
            allow_requests_without_proxy_protocol: true,
            disallowed_versions: vec![1],
        };
        assert!(matches!(
            proxy_protocol(&allowing, &mut plain, &mut state(), false),
            Ok(Step::Done)
        ));
        let mut v1 = BytesMut::from(&b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"[..]);
        assert!(proxy_protocol(&allowing, &mut v1, &mut state(), false).is_err());
    }
}
