//! `envoy.filters.http.compressor`: response compression with gzip, brotli or zstd, and
//! its per-route form. The legacy top-level fields apply when there is no
//! `response_direction_config`, as in Envoy (and move the counters to the legacy tree).

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3::{RuntimeFeatureFlag, TypedExtensionConfig};
use crate::pb::envoy::extensions::compression;
use crate::pb::envoy::extensions::filters::http::compressor::v3 as pb;
use crate::route::StringMatcher;
use crate::type_urls;

/// The filter's listener-level config.
#[derive(Debug, Clone)]
pub struct Compressor {
    pub library: Library,
    pub response: ResponseDirection,
    /// With several compressor filters, this one wins a tie in `Accept-Encoding` q-values.
    pub choose_first: bool,
    /// Whether `response_direction_config` was given: Envoy then counts under
    /// `…response.`, else in the legacy tree without it.
    pub response_stats_scoped: bool,
}

/// `compressor_library`: the codec and the name the counters are rooted at.
#[derive(Debug, Clone)]
pub struct Library {
    pub name: String,
    pub codec: Codec,
}

/// A compression library's settings, with Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Codec {
    Gzip {
        /// 1–9; Envoy's `DEFAULT_COMPRESSION` is zlib's 6.
        level: u32,
        /// 9–15 (Envoy's default 12).
        window_bits: u8,
    },
    Brotli {
        /// 0–11 (Envoy's default 3).
        quality: u32,
        /// 10–24 (default 18).
        window_bits: u32,
        /// 16–24 (default 24).
        input_block_bits: u32,
        /// 0 generic, 1 text, 2 font (Envoy's `DEFAULT` is generic).
        mode: u32,
        disable_literal_context_modeling: bool,
    },
    Zstd {
        /// zstd's level (Envoy's default 3).
        level: i32,
        enable_checksum: bool,
        /// zstd's strategy number, 0 for the library's default.
        strategy: u32,
    },
}

impl Codec {
    /// The `Content-Encoding` token this codec produces.
    pub fn encoding(&self) -> &'static str {
        match self {
            Codec::Gzip { .. } => "gzip",
            Codec::Brotli { .. } => "br",
            Codec::Zstd { .. } => "zstd",
        }
    }

    /// The library's own counter prefix (`gzip`, `brotli`, `zstd`), as Envoy's.
    pub fn stats_prefix(&self) -> &'static str {
        match self {
            Codec::Gzip { .. } => "gzip",
            Codec::Brotli { .. } => "brotli",
            Codec::Zstd { .. } => "zstd",
        }
    }
}

/// Which content types are compressed: Envoy's default list, or the configured matchers
/// or exact types.
#[derive(Debug, Clone)]
pub enum ContentTypes {
    /// Compared case-insensitively with the type before any `;` parameters.
    Exact(Vec<String>),
    Matchers(Vec<StringMatcher>),
}

/// Envoy's default compressible types.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
];

impl ContentTypes {
    /// Whether `value` (the type without parameters, trimmed) is compressible.
    pub fn allows(&self, value: &str) -> bool {
        match self {
            ContentTypes::Exact(list) => list.iter().any(|t| t.eq_ignore_ascii_case(value)),
            ContentTypes::Matchers(list) => list.iter().any(|m| m.matches(value)),
        }
    }
}

/// The response direction's settings.
#[derive(Debug, Clone)]
pub struct ResponseDirection {
    pub enabled: bool,
    /// A response with a shorter `Content-Length` is sent as it is (Envoy: 0 means 30).
    pub min_content_length: u64,
    pub content_types: ContentTypes,
    pub disable_on_etag_header: bool,
    pub weaken_etag_on_compress: bool,
    pub remove_accept_encoding_header: bool,
    pub uncompressible_response_codes: Vec<u16>,
}

/// `CompressorPerRoute`: turns response compression off or on, and may replace the
/// library or `remove_accept_encoding_header` for the route.
#[derive(Debug, Clone, Default)]
pub struct CompressorPerRoute {
    pub response_enabled: Option<bool>,
    pub remove_accept_encoding_header: Option<bool>,
    pub library: Option<Library>,
}

/// `RuntimeFeatureFlag`'s default (there is no runtime); `unset` when absent.
fn flag(f: Option<&RuntimeFeatureFlag>, unset: bool) -> bool {
    f.map_or(unset, |f| f.default_value.as_ref().is_none_or(|v| v.value))
}

fn content_types(
    exact: &[String],
    matchers: &[crate::pb::envoy::r#type::matcher::v3::StringMatcher],
    path: &str,
) -> Result<ContentTypes> {
    if !matchers.is_empty() {
        return matchers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                crate::route::string_matcher(m)
                    .map_err(|e| e.within(format!("{path}.content_type_matcher[{i}]")))
            })
            .collect::<Result<_>>()
            .map(ContentTypes::Matchers);
    }
    let list: Vec<String> = if exact.is_empty() {
        DEFAULT_CONTENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        exact.to_vec()
    };
    Ok(ContentTypes::Exact(list))
}

fn min_length(v: Option<&crate::pb::google::protobuf::UInt32Value>) -> u64 {
    match v.map_or(0, |v| v.value) {
        0 => 30,
        n => u64::from(n),
    }
}

impl TryFrom<&pb::Compressor> for Compressor {
    type Error = ValidationError;

    fn try_from(c: &pb::Compressor) -> Result<Self> {
        let library = library(
            c.compressor_library
                .as_ref()
                .ok_or_else(|| ValidationError::required("compressor_library"))?,
            "compressor_library",
        )?;
        if let Some(request) = &c.request_direction_config {
            let common = request.common_config.as_ref();
            if flag(common.and_then(|c| c.enabled.as_ref()), true) {
                return Err(ValidationError::new(
                    "request_direction_config",
                    "request compression is not supported by sluice (set common_config.enabled.default_value: false, or leave the field out)",
                ));
            }
        }
        let response = match &c.response_direction_config {
            Some(r) => {
                if r.status_header_enabled {
                    return Err(ValidationError::new(
                        "response_direction_config.status_header_enabled",
                        "the x-envoy-compression-status header is not supported by sluice",
                    ));
                }
                let common = r.common_config.clone().unwrap_or_default();
                ResponseDirection {
                    enabled: flag(common.enabled.as_ref(), true),
                    min_content_length: min_length(common.min_content_length.as_ref()),
                    content_types: content_types(
                        &common.content_type,
                        &common.content_type_matcher,
                        "response_direction_config.common_config",
                    )?,
                    disable_on_etag_header: r.disable_on_etag_header,
                    weaken_etag_on_compress: r.weaken_etag_on_compress,
                    remove_accept_encoding_header: r.remove_accept_encoding_header,
                    uncompressible_response_codes: r
                        .uncompressible_response_codes
                        .iter()
                        .enumerate()
                        .map(|(i, &code)| {
                            u16::try_from(code)
                                .ok()
                                .filter(|c| (200..600).contains(c))
                                .ok_or_else(|| {
                                    ValidationError::new(
                                        format!(
                                            "response_direction_config.uncompressible_response_codes[{i}]"
                                        ),
                                        "must be between 200 and 599",
                                    )
                                })
                        })
                        .collect::<Result<_>>()?,
                }
            }
            None => ResponseDirection {
                enabled: flag(c.runtime_enabled.as_ref(), true),
                min_content_length: min_length(c.content_length.as_ref()),
                content_types: content_types(&c.content_type, &[], "")?,
                disable_on_etag_header: c.disable_on_etag_header,
                weaken_etag_on_compress: false,
                remove_accept_encoding_header: c.remove_accept_encoding_header,
                uncompressible_response_codes: Vec::new(),
            },
        };
        Ok(Self {
            library,
            response,
            choose_first: c.choose_first,
            response_stats_scoped: c.response_direction_config.is_some(),
        })
    }
}

impl TryFrom<&pb::CompressorPerRoute> for CompressorPerRoute {
    type Error = ValidationError;

    fn try_from(p: &pb::CompressorPerRoute) -> Result<Self> {
        use pb::compressor_per_route::Override;
        match &p.r#override {
            Some(Override::Disabled(true)) => Ok(Self {
                response_enabled: Some(false),
                ..Self::default()
            }),
            Some(Override::Overrides(o)) => Ok(Self {
                // As Envoy: a present (even empty) response config turns compression on.
                response_enabled: o.response_direction_config.as_ref().map(|_| true),
                remove_accept_encoding_header: o
                    .response_direction_config
                    .as_ref()
                    .and_then(|r| r.remove_accept_encoding_header.as_ref())
                    .map(|v| v.value),
                library: o
                    .compressor_library
                    .as_ref()
                    .map(|l| library(l, "overrides.compressor_library"))
                    .transpose()?,
            }),
            _ => Err(ValidationError::new(
                "",
                "CompressorPerRoute needs disabled: true or overrides",
            )),
        }
    }
}

/// Decodes `compressor_library`; another library type is refused by name.
fn library(l: &TypedExtensionConfig, path: &str) -> Result<Library> {
    use crate::util::unpack_any;
    let any = l
        .typed_config
        .as_ref()
        .ok_or_else(|| ValidationError::required(format!("{path}.typed_config")))?;
    let typed = format!("{path}.typed_config");
    let codec = match any.type_url.as_str() {
        type_urls::GZIP_COMPRESSOR => {
            let g: compression::gzip::compressor::v3::Gzip =
                unpack_any(any, type_urls::GZIP_COMPRESSOR, &typed)?;
            use compression::gzip::compressor::v3::gzip::CompressionLevel;
            let level = match CompressionLevel::try_from(g.compression_level) {
                Ok(CompressionLevel::DefaultCompression) => 6,
                Ok(level) => level as u32,
                Err(_) => {
                    return Err(ValidationError::new(
                        format!("{typed}.compression_level"),
                        "unknown level",
                    ))
                }
            };
            let window_bits = bounded(g.window_bits.as_ref(), 12, 9..=15, &typed, "window_bits")?;
            bounded(g.memory_level.as_ref(), 5, 1..=9, &typed, "memory_level")?;
            bounded(
                g.chunk_size.as_ref(),
                4096,
                4096..=65536,
                &typed,
                "chunk_size",
            )?;
            Codec::Gzip {
                level,
                window_bits: window_bits as u8,
            }
        }
        type_urls::BROTLI_COMPRESSOR => {
            let b: compression::brotli::compressor::v3::Brotli =
                unpack_any(any, type_urls::BROTLI_COMPRESSOR, &typed)?;
            bounded(
                b.chunk_size.as_ref(),
                4096,
                4096..=65536,
                &typed,
                "chunk_size",
            )?;
            Codec::Brotli {
                quality: bounded(b.quality.as_ref(), 3, 0..=11, &typed, "quality")?,
                window_bits: bounded(b.window_bits.as_ref(), 18, 10..=24, &typed, "window_bits")?,
                input_block_bits: bounded(
                    b.input_block_bits.as_ref(),
                    24,
                    16..=24,
                    &typed,
                    "input_block_bits",
                )?,
                // Envoy's DEFAULT (0) and GENERIC (1) are brotli's generic mode.
                mode: match b.encoder_mode {
                    0 | 1 => 0,
                    2 => 1,
                    3 => 2,
                    _ => {
                        return Err(ValidationError::new(
                            format!("{typed}.encoder_mode"),
                            "unknown mode",
                        ))
                    }
                },
                disable_literal_context_modeling: b.disable_literal_context_modeling,
            }
        }
        type_urls::ZSTD_COMPRESSOR => {
            let z: compression::zstd::compressor::v3::Zstd =
                unpack_any(any, type_urls::ZSTD_COMPRESSOR, &typed)?;
            if z.dictionary.is_some() {
                return Err(ValidationError::new(
                    format!("{typed}.dictionary"),
                    "zstd dictionaries are not supported by sluice",
                ));
            }
            bounded(
                z.chunk_size.as_ref(),
                4096,
                4096..=65536,
                &typed,
                "chunk_size",
            )?;
            Codec::Zstd {
                level: z.compression_level.as_ref().map_or(3, |v| v.value as i32),
                enable_checksum: z.enable_checksum,
                strategy: u32::try_from(z.strategy).unwrap_or(0),
            }
        }
        other => {
            let message = type_urls::message_name(other);
            return Err(ValidationError::new(
                typed,
                format!("compressor library {message} is not supported by sluice (gzip, brotli and zstd are)"),
            ));
        }
    };
    Ok(Library {
        name: l.name.clone(),
        codec,
    })
}

/// A wrapped number with Envoy's default and range.
fn bounded(
    v: Option<&crate::pb::google::protobuf::UInt32Value>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    path: &str,
    field: &str,
) -> Result<u32> {
    let value = v.map_or(default, |v| v.value);
    if !range.contains(&value) {
        return Err(ValidationError::new(
            format!("{path}.{field}"),
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::google::protobuf::{Any, BoolValue, UInt32Value};
    use prost::Message;

    fn gzip(window_bits: Option<u32>) -> TypedExtensionConfig {
        let g = compression::gzip::compressor::v3::Gzip {
            window_bits: window_bits.map(|value| UInt32Value { value }),
            ..Default::default()
        };
        TypedExtensionConfig {
            name: "text".into(),
            typed_config: Some(Any {
                type_url: type_urls::GZIP_COMPRESSOR.into(),
                value: g.encode_to_vec(),
            }),
        }
    }

    fn with(f: impl FnOnce(&mut pb::Compressor)) -> Result<Compressor> {
        let mut c = pb::Compressor {
            compressor_library: Some(gzip(None)),
            ..Default::default()
        };
        f(&mut c);
        Compressor::try_from(&c)
    }

    #[test]
    fn defaults_are_envoys() {
        let c = with(|_| {}).unwrap();
        assert_eq!(
            c.library.codec,
            Codec::Gzip {
                level: 6,
                window_bits: 12
            }
        );
        assert!(c.response.enabled);
        assert_eq!(c.response.min_content_length, 30);
        assert!(c.response.content_types.allows("application/json"));
        assert!(c.response.content_types.allows("TEXT/HTML"));
        assert!(!c.response.content_types.allows("image/png"));
        assert!(!c.response_stats_scoped);
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |f: fn(&mut pb::Compressor)| with(f).unwrap_err().to_string();
        let e = err(|c| c.compressor_library = None);
        assert!(e.contains("compressor_library"), "{e}");
        let e = err(|c| c.compressor_library = Some(gzip(Some(20))));
        assert!(
            e.contains("compressor_library.typed_config.window_bits"),
            "{e}"
        );
        let e = err(|c| {
            c.request_direction_config = Some(pb::compressor::RequestDirectionConfig::default())
        });
        assert!(e.contains("request_direction_config"), "{e}");
        let e = err(|c| {
            c.response_direction_config = Some(pb::compressor::ResponseDirectionConfig {
                status_header_enabled: true,
                ..Default::default()
            })
        });
        assert!(e.contains("status_header_enabled"), "{e}");
        let e = err(|c| {
            let mut lib = gzip(None);
            lib.typed_config.as_mut().unwrap().type_url =
                "type.googleapis.com/envoy.extensions.compression.qatzip.compressor.v3alpha.Qatzip"
                    .into();
            c.compressor_library = Some(lib);
        });
        assert!(e.contains("Qatzip is not supported"), "{e}");
        // Request compression turned off explicitly is accepted.
        with(|c| {
            c.request_direction_config = Some(pb::compressor::RequestDirectionConfig {
                common_config: Some(pb::compressor::CommonDirectionConfig {
                    enabled: Some(RuntimeFeatureFlag {
                        default_value: Some(BoolValue { value: false }),
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                }),
            })
        })
        .unwrap();
    }
}
