//! Either proxy under test, started from the same bootstrap: the differential suites run
//! one scenario through `sluice` and through real Envoy and compare what they see.

use std::net::SocketAddr;

use crate::envoy::Envoy;
use crate::process::Sluice;

/// Which proxy a scenario runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sluice,
    Envoy,
}

/// A running proxy, seen through its admin endpoint; stopped when dropped.
pub enum Proxy {
    Sluice(Sluice),
    Envoy(Envoy),
}

impl Proxy {
    /// Starts `kind` with `bootstrap`, waiting for its admin endpoint at `admin`.
    pub async fn start(kind: Kind, bootstrap: &str, admin: SocketAddr) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Sluice => Self::Sluice(Sluice::start(bootstrap, admin).await?),
            Kind::Envoy => Self::Envoy(Envoy::start(bootstrap, admin).await?),
        })
    }

    /// A counter or gauge from `/stats`; `None` when absent.
    pub async fn stat(&self, name: &str) -> Option<i64> {
        match self {
            Self::Sluice(s) => s.stat(name).await.ok(),
            Self::Envoy(e) => e.stat(name).await,
        }
    }
}
