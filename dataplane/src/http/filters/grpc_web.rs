//! `envoy.filters.http.grpc_web`: lets browsers speak gRPC. A request whose content type is
//! gRPC-Web (`application/grpc-web[-text][+proto]`) goes upstream as gRPC: the content
//! type becomes `application/grpc`, `te: trailers` and `grpc-accept-encoding` are set, the
//! length goes (the HTTP/2 framing replaces it), and a `-text` body is base64-decoded. The
//! answer goes back as gRPC-Web: its trailers become a final body frame (flag `0x80`, then
//! `name:value\r\n` lines), the whole body base64-encoded, frame by frame, when the client
//! accepts `-text`. A non-200 answer with a body (an error page, a local reply) is not gRPC:
//! as in Envoy it becomes `grpc-status` mapped from its HTTP status, with a local reply's
//! text as `grpc-message`, and no body.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::Frame;

use crate::body::{self, Body, BoxError};
use crate::http::ctx::RequestCtx;
use crate::http::filter::{BodyLimit, Decision, HttpFilter, PerRoute};
use crate::local_reply::{self, LocalReply};

const GRPC_WEB: &str = "application/grpc-web";
const GRPC_WEB_PROTO: &str = "application/grpc-web+proto";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";
const GRPC_WEB_TEXT_PROTO: &str = "application/grpc-web-text+proto";

/// The flag of the body frame that carries the trailers.
const TRAILER_FRAME: u8 = 0x80;

/// How much of a non-gRPC answer's text becomes `grpc-message`, as Envoy's.
const MAX_GRPC_MESSAGE: usize = 1024;

/// How much of a text request is read (and its base64 checked) before it goes upstream;
/// browsers send whole unary messages, far smaller. The rest is decoded as it streams.
const CHECKED_TEXT: usize = 64 * 1024;

/// The filter; it has no configuration.
pub struct GrpcWebFilter;

/// Left in the request's state for the response phases: the request was gRPC-Web.
#[derive(Clone, Copy)]
struct GrpcWebRequest {
    /// The client accepts (and gets) a base64 `-text` answer.
    text_response: bool,
}

fn bad_base64() -> LocalReply {
    LocalReply::new(
        StatusCode::BAD_REQUEST,
        "Bad gRPC-web request, invalid base64 data.",
    )
}

impl HttpFilter for GrpcWebFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let content_type = request
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let text_request = match content_type {
            Some(GRPC_WEB | GRPC_WEB_PROTO) => false,
            Some(GRPC_WEB_TEXT | GRPC_WEB_TEXT_PROTO) => true,
            _ => return Decision::Continue,
        };
        let text_response = request
            .headers
            .get(header::ACCEPT)
            .is_some_and(|v| v == GRPC_WEB_TEXT || v == GRPC_WEB_TEXT_PROTO);
        ctx.state.insert(GrpcWebRequest { text_response });
        let headers = &mut request.headers;
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let accept_encoding = HeaderName::from_static("grpc-accept-encoding");
        if !headers.contains_key(&accept_encoding) {
            headers.insert(accept_encoding, HeaderValue::from_static("identity"));
        }
        if !ctx.request_has_body {
            return Decision::Continue;
        }
        if text_request {
            // Read first, so that bad base64 is answered 400 before anything goes upstream.
            return Decision::ReadBody(BodyLimit {
                max_bytes: CHECKED_TEXT,
                allow_partial: true,
            });
        }
        // As Envoy, the messages go upstream without a length (hyper would otherwise set one
        // from the body's exact size).
        ctx.request_body.push(Box::new(|body| {
            http_body_util::BodyExt::boxed(Unsized(body))
        }));
        Decision::Continue
    }

    fn on_request_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _request: &mut Parts,
        body: &[u8],
        complete: bool,
    ) -> Decision {
        let checked = if complete {
            body.len()
        } else {
            body.len() / 4 * 4
        };
        if checked % 4 != 0 || decode_base64(&body[..checked]).is_err() {
            return Decision::Respond(bad_base64());
        }
        ctx.request_body.push(Box::new(|body| {
            http_body_util::BodyExt::boxed(Base64Decoding {
                inner: body,
                pending: BytesMut::new(),
            })
        }));
        Decision::Continue
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        end_stream: bool,
    ) {
        let Some(web) = ctx.state.get::<GrpcWebRequest>().copied() else {
            return;
        };
        let content_type = match web.text_response {
            true => GRPC_WEB_TEXT_PROTO,
            false => GRPC_WEB_PROTO,
        };
        response
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if end_stream || response.status == StatusCode::OK {
            return;
        }
        // Not gRPC: its status, and a local reply's text, become gRPC's; the body goes.
        let message = local_reply::message_of(response).map(|m| {
            let m = &m[..m.len().min(MAX_GRPC_MESSAGE)];
            local_reply::grpc_message(m)
        });
        let headers = &mut response.headers;
        headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(local_reply::grpc_status_for(response.status)),
        );
        if let Some(v) = message.and_then(|m| HeaderValue::from_str(&m).ok()) {
            headers.insert(HeaderName::from_static("grpc-message"), v);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &http::response::Parts,
        body: Body,
    ) -> Body {
        let Some(web) = ctx.state.get::<GrpcWebRequest>().copied() else {
            return body;
        };
        if response.status != StatusCode::OK {
            return body::empty();
        }
        http_body_util::BodyExt::boxed(GrpcWebEncoding {
            inner: body,
            text: web.text_response,
            pending: BytesMut::new(),
            done: false,
        })
    }
}

/// Decodes base64 made of padded segments one after another (a client may encode each
/// message on its own): every 4-character group is a unit.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for (i, group) in text.chunks(4).enumerate() {
        if group.contains(&b'=') {
            // A padded group ends a segment: decode the run before it and it.
            let end = i * 4 + group.len();
            engine.decode_vec(&text[start..end], &mut out)?;
            start = end;
        }
    }
    engine.decode_vec(&text[start..], &mut out)?;
    Ok(out)
}

/// A body that does not tell its length.
struct Unsized(Body);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// A request body of base64 text, decoded as it streams (4-character groups at a time).
struct Base64Decoding {
    inner: Body,
    pending: BytesMut,
}

impl http_body::Body for Base64Decoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let whole = this.pending.len() / 4 * 4;
                        if whole == 0 {
                            continue;
                        }
                        let text = this.pending.split_to(whole);
                        let decoded = decode_base64(&text).map_err(|e| Box::new(e) as BoxError)?;
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(decoded)))));
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Poll::Ready(None) if this.pending.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) => {
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "gRPC-Web text body is not whole base64",
                    )))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.pending.is_empty()
    }
}

/// A gRPC answer as gRPC-Web: trailers become the last body frame, and in text mode each
/// gRPC frame is base64-encoded whole, as it completes.
struct GrpcWebEncoding {
    inner: Body,
    text: bool,
    /// Text mode: bytes of a gRPC frame not yet complete.
    pending: BytesMut,
    done: bool,
}

impl GrpcWebEncoding {
    fn encoded(&self, raw: &[u8]) -> Bytes {
        match self.text {
            true => Bytes::from(base64::engine::general_purpose::STANDARD.encode(raw)),
            false => Bytes::copy_from_slice(raw),
        }
    }

    /// Text mode: every complete gRPC frame in `pending`, each encoded on its own.
    fn complete_frames(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        while self.pending.len() >= 5 {
            let length = u32::from_be_bytes([
                self.pending[1],
                self.pending[2],
                self.pending[3],
                self.pending[4],
            ]) as usize;
            if self.pending.len() < 5 + length {
                break;
            }
            let frame = self.pending.split_to(5 + length);
            out.extend_from_slice(&self.encoded(&frame));
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}

/// The gRPC-Web trailers frame: flag, 32-bit length, then `name:value\r\n` per trailer.
fn trailer_frame(trailers: &HeaderMap) -> Vec<u8> {
    let mut lines = Vec::new();
    for (name, value) in trailers {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(value.as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    let mut frame = Vec::with_capacity(5 + lines.len());
    frame.push(TRAILER_FRAME);
    frame.extend_from_slice(&(lines.len() as u32).to_be_bytes());
    frame.extend_from_slice(&lines);
    frame
}

impl http_body::Body for GrpcWebEncoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !this.text => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        if let Some(out) = this.complete_frames() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        this.done = true;
                        let rest = this.pending.split();
                        let mut out = BytesMut::from(&this.encoded(&rest)[..]);
                        out.extend_from_slice(&this.encoded(&trailer_frame(&trailers)));
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    if !this.pending.is_empty() {
                        let rest = this.pending.split();
                        return Poll::Ready(Some(Ok(Frame::data(this.encoded(&rest)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_segments_decode_one_after_another() {
        assert_eq!(decode_base64(b"AAAAAAFh").unwrap(), b"\0\0\0\0\x01a");
        // Two messages encoded on their own, padding between them.
        assert_eq!(decode_base64(b"YQ==Yg==").unwrap(), b"ab");
        assert!(decode_base64(b"Y!==").is_err());
        assert!(decode_base64(b"AAAAAAVoZWxsbw==AAAAAAVhZ2Fpbg==").is_ok());
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frame = trailer_frame(&trailers);
        assert_eq!(frame[0], TRAILER_FRAME);
        assert_eq!(&frame[1..5], &15u32.to_be_bytes());
        assert_eq!(&frame[5..], b"grpc-status:0\r\n");
    }
}
