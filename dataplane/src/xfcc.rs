//! `x-forwarded-client-cert`, as Envoy writes it: what the HTTP connection manager's
//! `forward_client_cert_details` does with the header a client sent, and the element it
//! adds for a mutual TLS connection — `By` (the URI SAN of the certificate sluice served),
//! `Hash` (SHA-256 of the client's certificate), then `Cert`, `Chain`, `Subject`, `URI` and
//! `DNS` as `set_current_client_cert_details` asks, in the order Envoy writes them.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use xds_types::hcm::{ClientCertDetails, ForwardClientCert};
use xds_types::tls::SanType;

use crate::listener::tls::TlsInfo;

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Applies the connection manager's policy to the request's header.
pub fn apply(
    headers: &mut HeaderMap,
    mode: ForwardClientCert,
    details: ClientCertDetails,
    tls: Option<&TlsInfo>,
) {
    if mode == ForwardClientCert::AlwaysForwardOnly {
        return;
    }
    let Some(tls) = tls.filter(|t| !t.peer_chain.is_empty()) else {
        headers.remove(&XFCC);
        return;
    };
    let element = match mode {
        ForwardClientCert::Sanitize => {
            headers.remove(&XFCC);
            return;
        }
        ForwardClientCert::ForwardOnly => return,
        ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet => element(tls, details),
        ForwardClientCert::AlwaysForwardOnly => unreachable!("handled above"),
    };
    let value = match (mode, headers.get(&XFCC).and_then(|v| v.to_str().ok())) {
        (ForwardClientCert::AppendForward, Some(existing)) if !existing.is_empty() => {
            format!("{existing},{element}")
        }
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFCC.clone(), v);
    }
}

/// This connection's element.
fn element(tls: &TlsInfo, details: ClientCertDetails) -> String {
    let leaf = tls.peer_chain[0].as_ref();
    let mut parts = Vec::new();
    if let Some(by) = &tls.local_uri {
        parts.push(format!("By={by}"));
    }
    let digest: String = Sha256::digest(leaf)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    parts.push(format!("Hash={digest}"));
    let sans = crate::tls::subject_alt_names(leaf);
    if details.cert {
        parts.push(format!("Cert=\"{}\"", url_encoded_pem(&[leaf])));
    }
    if details.chain {
        let chain: Vec<&[u8]> = tls.peer_chain.iter().map(|c| c.as_ref()).collect();
        parts.push(format!("Chain=\"{}\"", url_encoded_pem(&chain)));
    }
    if details.subject {
        parts.push(format!("Subject=\"{}\"", subject(leaf)));
    }
    if details.uri {
        let uri = sans
            .iter()
            .find(|(t, _)| *t == SanType::Uri)
            .map_or("", |(_, v)| v.as_str());
        parts.push(format!("URI={uri}"));
    }
    if details.dns {
        for (_, dns) in sans.iter().filter(|(t, _)| *t == SanType::Dns) {
            parts.push(format!("DNS={dns}"));
        }
    }
    parts.join(";")
}

/// The certificate's subject in RFC 2253 form (most specific first: `CN=a,O=b`), as
/// Envoy prints it.
pub(crate) fn subject(der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return String::new();
    };
    let registry = x509_parser::objects::oid_registry();
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let name = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = attr.as_str().map(escape_rfc2253).unwrap_or_default();
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i + 1 == value.chars().count() && c == ' ';
        if leading || trailing || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// PEM of `certificates`, percent-encoded except for RFC 3986's unreserved characters.
fn url_encoded_pem(certificates: &[&[u8]]) -> String {
    use base64::Engine;
    let mut pem = String::new();
    for der in certificates {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let mut out = String::with_capacity(pem.len() * 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_cert() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.example".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://mesh/ns/a/sa/b".try_into().unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client");
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn info(local_uri: Option<&str>) -> TlsInfo {
        TlsInfo {
            sni: None,
            alpn: None,
            peer_chain: vec![client_cert().into()],
            local_uri: local_uri.map(str::to_string),
        }
    }

    #[test]
    fn sanitize_set_writes_this_connection_element() {
        let mut headers = HeaderMap::new();
        headers.insert(&XFCC, HeaderValue::from_static("By=spoofed"));
        let details = ClientCertDetails {
            subject: true,
            uri: true,
            dns: true,
            cert: false,
            chain: false,
        };
        apply(
            &mut headers,
            ForwardClientCert::SanitizeSet,
            details,
            Some(&info(Some("spiffe://mesh/proxy"))),
        );
        let value = headers[&XFCC].to_str().unwrap();
        assert!(value.starts_with("By=spiffe://mesh/proxy;Hash="), "{value}");
        assert!(
            value.ends_with(
                ";Subject=\"CN=client,O=Acme\\, Inc\";URI=spiffe://mesh/ns/a/sa/b;DNS=client.example"
            ),
            "{value}"
        );
        assert!(!value.contains("spoofed"));
    }

    #[test]
    fn without_mutual_tls_the_header_is_removed_unless_always_forwarded() {
        for mode in [
            ForwardClientCert::Sanitize,
            ForwardClientCert::ForwardOnly,
            ForwardClientCert::AppendForward,
            ForwardClientCert::SanitizeSet,
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(&XFCC, HeaderValue::from_static("By=spoofed"));
            apply(&mut headers, mode, ClientCertDetails::default(), None);
            assert!(headers.get(&XFCC).is_none(), "{mode:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(&XFCC, HeaderValue::from_static("By=kept"));
        apply(
            &mut headers,
            ForwardClientCert::AlwaysForwardOnly,
            ClientCertDetails::default(),
            None,
        );
        assert_eq!(headers[&XFCC], "By=kept");
        apply(
            &mut headers,
            ForwardClientCert::AppendForward,
            ClientCertDetails::default(),
            Some(&info(None)),
        );
        assert!(headers[&XFCC]
            .to_str()
            .unwrap()
            .starts_with("By=kept,Hash="));
    }
}
