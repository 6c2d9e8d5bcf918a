//! The xDS resource kinds both planes speak, defined once: type URL, proto message, the
//! names operators and messages use, how a resource is named, and the push order.

use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::pb::envoy::config::listener::v3::Listener;
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use crate::type_urls;

/// One resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub url: &'static str,
    /// What operators type and `sluicectl` shows (`sluicectl get route`).
    pub short: &'static str,
    /// How messages name it.
    pub human: &'static str,
}

impl Kind {
    /// The full proto message name (`envoy.config.cluster.v3.Cluster`).
    pub fn message(&self) -> &'static str {
        type_urls::message_name(self.url)
    }
}

pub const SECRET: Kind = Kind {
    url: type_urls::SECRET,
    short: "secret",
    human: "secret",
};
pub const CLUSTER: Kind = Kind {
    url: type_urls::CLUSTER,
    short: "cluster",
    human: "cluster",
};
pub const ENDPOINTS: Kind = Kind {
    url: type_urls::CLUSTER_LOAD_ASSIGNMENT,
    short: "endpoints",
    human: "endpoints",
};
pub const LISTENER: Kind = Kind {
    url: type_urls::LISTENER,
    short: "listener",
    human: "listener",
};
pub const ROUTE: Kind = Kind {
    url: type_urls::ROUTE_CONFIGURATION,
    short: "route",
    human: "route configuration",
};

/// Every kind, in the order additions are pushed: each before the kinds that use it
/// (make-before-break); removals go in the reverse order.
pub const KINDS: [Kind; 5] = [SECRET, CLUSTER, ENDPOINTS, LISTENER, ROUTE];

/// The kind of a type URL.
pub fn kind_of(type_url: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.url == type_url)
}

/// How messages name a type URL (`cluster`, `route configuration`, …).
pub fn human(type_url: &str) -> &'static str {
    kind_of(type_url).map_or("resource", |k| k.human)
}

/// A proto that is one xDS resource: its kind and its name.
pub trait Resource: prost::Message + Default {
    const KIND: Kind;
    /// The resource name (`cluster_name` for endpoints).
    fn name(&self) -> &str;
}

macro_rules! resource {
    ($pb:ty, $kind:expr, $name:ident) => {
        impl Resource for $pb {
            const KIND: Kind = $kind;
            fn name(&self) -> &str {
                &self.$name
            }
        }
    };
}

resource!(Secret, SECRET, name);
resource!(Cluster, CLUSTER, name);
resource!(ClusterLoadAssignment, ENDPOINTS, cluster_name);
resource!(Listener, LISTENER, name);
resource!(RouteConfiguration, ROUTE, name);
