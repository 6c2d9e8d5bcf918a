//! `envoy.filters.http.decompressor`: request and response bodies decompressed with gzip,
//! brotli or zstd when their `Content-Encoding` starts with the library's encoding.

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3::RuntimeFeatureFlag;
use crate::pb::envoy::extensions::compression;
use crate::pb::envoy::extensions::filters::http::decompressor::v3 as pb;
use crate::type_urls;

/// The filter's config.
#[derive(Debug, Clone)]
pub struct Decompressor {
    /// `decompressor_library.name`, where the counters are rooted.
    pub name: String,
    pub codec: DecoderCodec,
    pub request: Direction,
    pub response: Direction,
    /// Appends the library's encoding to the request's `Accept-Encoding` when responses are
    /// decompressed (Envoy's default: on).
    pub advertise_accept_encoding: bool,
}

/// One direction's settings.
#[derive(Debug, Clone, Copy)]
pub struct Direction {
    pub enabled: bool,
    /// Decompresses even under `Cache-Control: no-transform`.
    pub ignore_no_transform_header: bool,
}

/// A decompression library, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecoderCodec {
    Gzip {
        /// Output may be at most this many times the input so far (Envoy's default 100).
        max_inflate_ratio: u32,
    },
    Brotli,
    Zstd,
}

impl DecoderCodec {
    /// The `Content-Encoding` token this library undoes.
    pub fn encoding(&self) -> &'static str {
        match self {
            DecoderCodec::Gzip { .. } => "gzip",
            DecoderCodec::Brotli => "br",
            DecoderCodec::Zstd => "zstd",
        }
    }

    /// The library's own counter prefix, as Envoy's.
    pub fn stats_prefix(&self) -> &'static str {
        match self {
            DecoderCodec::Gzip { .. } => "gzip",
            DecoderCodec::Brotli => "brotli",
            DecoderCodec::Zstd => "zstd",
        }
    }
}

fn direction(common: Option<&pb::decompressor::CommonDirectionConfig>) -> Direction {
    let enabled = |f: Option<&RuntimeFeatureFlag>| {
        f.is_none_or(|f| f.default_value.as_ref().is_none_or(|v| v.value))
    };
    Direction {
        enabled: enabled(common.and_then(|c| c.enabled.as_ref())),
        ignore_no_transform_header: common.is_some_and(|c| c.ignore_no_transform_header),
    }
}

fn bounded(
    v: Option<&crate::pb::google::protobuf::UInt32Value>,
    range: std::ops::RangeInclusive<u32>,
    path: String,
) -> Result<Option<u32>> {
    match v.map(|v| v.value) {
        Some(n) if !range.contains(&n) => Err(ValidationError::new(
            path,
            format!("must be between {} and {}", range.start(), range.end()),
        )),
        other => Ok(other),
    }
}

impl TryFrom<&pb::Decompressor> for Decompressor {
    type Error = ValidationError;

    fn try_from(d: &pb::Decompressor) -> Result<Self> {
        use crate::util::unpack_any;
        let library = d
            .decompressor_library
            .as_ref()
            .ok_or_else(|| ValidationError::required("decompressor_library"))?;
        let any = library
            .typed_config
            .as_ref()
            .ok_or_else(|| ValidationError::required("decompressor_library.typed_config"))?;
        let path = "decompressor_library.typed_config";
        let codec = match any.type_url.as_str() {
            type_urls::GZIP_DECOMPRESSOR => {
                let g: compression::gzip::decompressor::v3::Gzip =
                    unpack_any(any, type_urls::GZIP_DECOMPRESSOR, path)?;
                bounded(g.window_bits.as_ref(), 9..=15, format!("{path}.window_bits"))?;
                bounded(g.chunk_size.as_ref(), 4096..=65536, format!("{path}.chunk_size"))?;
                DecoderCodec::Gzip {
                    max_inflate_ratio: bounded(
                        g.max_inflate_ratio.as_ref(),
                        1..=1032,
                        format!("{path}.max_inflate_ratio"),
                    )?
                    .unwrap_or(100),
                }
            }
            type_urls::BROTLI_DECOMPRESSOR => {
                let b: compression::brotli::decompressor::v3::Brotli =
                    unpack_any(any, type_urls::BROTLI_DECOMPRESSOR, path)?;
                bounded(b.chunk_size.as_ref(), 4096..=65536, format!("{path}.chunk_size"))?;
                DecoderCodec::Brotli
            }
            type_urls::ZSTD_DECOMPRESSOR => {
                let z: compression::zstd::decompressor::v3::Zstd =
                    unpack_any(any, type_urls::ZSTD_DECOMPRESSOR, path)?;
                if !z.dictionaries.is_empty() {
                    return Err(ValidationError::new(
                        format!("{path}.dictionaries"),
                        "zstd dictionaries are not supported by sluice",
                    ));
                }
                bounded(z.chunk_size.as_ref(), 4096..=65536, format!("{path}.chunk_size"))?;
                DecoderCodec::Zstd
            }
            other => {
                return Err(ValidationError::new(
                    path,
                    format!(
                        "decompressor library {} is not supported by sluice (gzip, brotli and zstd are)",
                        type_urls::message_name(other)
                    ),
                ))
            }
        };
        let request = d.request_direction_config.as_ref();
        Ok(Self {
            name: library.name.clone(),
            codec,
            request: direction(request.and_then(|r| r.common_config.as_ref())),
            response: direction(
                d.response_direction_config
                    .as_ref()
                    .and_then(|r| r.common_config.as_ref()),
            ),
            advertise_accept_encoding: request
                .and_then(|r| r.advertise_accept_encoding.as_ref())
                .is_none_or(|v| v.value),
        })
    }
}
