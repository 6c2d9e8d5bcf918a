//! `sluice-cp`, the control plane: it serves Envoy's xDS v3 to `sluice` and to Envoy.
//!
//! # Layout
//! - [`resources`]: a validated, versioned set of Envoy resources (from YAML/JSON documents
//!   in Envoy's proto3-JSON shape), each encoded once.
//! - [`ads`]: the Aggregated Discovery Service, state of the world and delta, with the
//!   per-stream protocol state (subscriptions, versions, nonces, ACK/NACK).
//! - [`registry`]: every group's resources and revisions, persisted by a [`store::Store`]
//!   (the embedded [`store::FileStore`] by default) before they are served.
//! - [`api`]: the operator API of `proto/` (`sluice.admin.v1`), which `sluicectl` speaks;
//!   [`auth`]: its read and write tokens.
//! - [`tls`]: TLS and mutual TLS for the xDS and API servers and for `sluicectl`.
//! - [`fleet`]: what every node was sent, ACKed and NACKed; [`csds`] serves it over the
//!   standard Client Status Discovery Service.

pub mod ads;
pub mod api;
pub mod auth;
pub mod csds;
pub mod fleet;
pub mod metrics;
pub mod registry;
pub mod resources;
pub mod store;
pub mod telemetry;
pub mod tls;
