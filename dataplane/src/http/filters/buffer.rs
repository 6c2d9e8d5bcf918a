//! `envoy.filters.http.buffer`: the whole request body is read before the request goes on
//! (an upstream that cannot take a streamed body gets it at once), and a body longer than
//! the limit is answered 413, as Envoy's filter. A route may set its own limit or turn the
//! filter off.

use http::request::Parts;
use http::{header, HeaderValue, StatusCode};

use crate::http::ctx::RequestCtx;
use crate::http::filter::{BodyLimit, Decision, HttpFilter, PerRoute};
use crate::local_reply::LocalReply;

/// The filter: its listener-level limit.
pub struct BufferFilter {
    max_request_bytes: u32,
}

impl BufferFilter {
    pub fn new(max_request_bytes: u32) -> Self {
        Self { max_request_bytes }
    }

    fn limit(&self, per_route: Option<&PerRoute>) -> usize {
        match per_route {
            Some(PerRoute::Buffer { max_request_bytes }) => *max_request_bytes as usize,
            _ => self.max_request_bytes as usize,
        }
    }
}

impl HttpFilter for BufferFilter {
    fn on_request(
        &self,
        _ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        _request: &mut Parts,
    ) -> Decision {
        // One byte past the limit: a body that reaches it is too long; one that stops
        // short of it has been read whole.
        Decision::ReadBody(BodyLimit {
            max_bytes: self.limit(per_route).saturating_add(1),
            allow_partial: true,
        })
    }

    fn on_request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
        body: &[u8],
        _complete: bool,
    ) -> Decision {
        if body.len() > self.limit(per_route) {
            return Decision::Respond(LocalReply::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
            ));
        }
        // The whole body is here: as Envoy's filter, a request with a body but no length
        // goes on with one (a chunked body is sent as one); one without a body is left be.
        if !body.is_empty() && !request.headers.contains_key(header::CONTENT_LENGTH) {
            request.headers.remove(header::TRANSFER_ENCODING);
            request
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Decision::Continue
    }
}
