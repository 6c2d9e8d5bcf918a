//! Envoy's generated v3 protobuf types, re-exported from the maintained `envoy-types`
//! crate. The rest of the workspace names raw protos only through this module.

pub use envoy_types::pb::*;
