//! The one end-to-end test binary: real `sluice`, `sluice-cp`, Envoy and gRPC clients over
//! loopback. Each suite is a module of `cases`.

// The routing and differential suites build large `json!` documents.
#![recursion_limit = "512"]

mod cases;
