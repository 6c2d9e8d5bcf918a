//! `sluice-cp`, the control plane: it serves Envoy's xDS v3 to `sluice` and to Envoy.
//!
//! # Layout
//! - [`resources`]: a validated, versioned set of Envoy resources (from YAML/JSON documents
//!   in Envoy's proto3-JSON shape), each encoded once.
//! - [`ads`]: the Aggregated Discovery Service, state of the world and delta, with the
//!   per-stream protocol state (subscriptions, versions, nonces, ACK/NACK).

pub mod ads;
pub mod resources;
