//! A cluster's load-balancing configuration: the policy (from `lb_policy` with its
//! `lb_config`, or the typed `load_balancing_policy` list) and `common_lb_config`.

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::cluster::v3 as pb;
use crate::pb::envoy::extensions::load_balancing_policies as policies;
use crate::util::unpack_any;

/// Envoy's default `healthy_panic_threshold` (percent).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// Envoy's default and largest ring sizes.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Largest Maglev table Envoy accepts.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// How a host is chosen within a priority (and locality).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of `choice_count` choices (or every host with `full_scan`); with unequal
    /// weights, a host's weight is divided by `(active + 1) ^ active_request_bias`.
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
        full_scan: bool,
    },
    Random,
    /// Ketama-style consistent hashing over a ring of `min..=max` entries.
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    /// Maglev consistent hashing over a table of `table_size` (prime) entries.
    Maglev {
        table_size: u64,
    },
}

impl LbPolicy {
    /// Whether the policy picks by the request's hash (route `hash_policy`).
    pub fn is_consistent_hash(&self) -> bool {
        matches!(self, Self::RingHash { .. } | Self::Maglev { .. })
    }
}

/// The load-balancing settings of a cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbConfig {
    pub policy: LbPolicy,
    /// Below this percentage of healthy hosts a priority uses all of its hosts; 0
    /// disables panic mode.
    pub healthy_panic_threshold: f64,
    /// Pick a locality by its weight first, then a host within it.
    pub locality_weighted: bool,
    /// New hosts take no traffic (and do not count) until their first health check.
    pub ignore_new_hosts_until_first_hc: bool,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            policy: LbPolicy::RoundRobin,
            healthy_panic_threshold: DEFAULT_PANIC_THRESHOLD,
            locality_weighted: false,
            ignore_new_hosts_until_first_hc: false,
        }
    }
}

const LEAST_REQUEST: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const ROUND_ROBIN: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const RANDOM: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random";
const RING_HASH: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";
const MAGLEV: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev";
const WRR_LOCALITY: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality";

/// The typed policies Sluice implements; the first of these in a cluster's
/// `load_balancing_policy.policies` is the one used, as in Envoy.
pub const SUPPORTED_TYPED_POLICIES: &[&str] = &[
    LEAST_REQUEST,
    ROUND_ROBIN,
    RANDOM,
    RING_HASH,
    MAGLEV,
    WRR_LOCALITY,
];

/// Converts the cluster's load-balancing fields.
pub fn lb_config(c: &pb::Cluster) -> Result<LbConfig> {
    let mut out = LbConfig::default();
    if let Some(common) = c.common_lb_config.as_ref() {
        common_lb_config(common, &mut out).map_err(|e| e.within("common_lb_config"))?;
    }
    match c.load_balancing_policy.as_ref() {
        Some(typed) => {
            if let Some(legacy) = c.lb_config.as_ref() {
                return Err(ValidationError::new(
                    lb_config_field(legacy),
                    "cannot be combined with load_balancing_policy",
                ));
            }
            let (policy, locality_weighted) =
                typed_policy(typed, 0).map_err(|e| e.within("load_balancing_policy"))?;
            out.policy = policy;
            out.locality_weighted |= locality_weighted;
        }
        None => out.policy = legacy_policy(c)?,
    }
    Ok(out)
}

fn common_lb_config(common: &pb::cluster::CommonLbConfig, out: &mut LbConfig) -> Result<()> {
    use pb::cluster::common_lb_config::LocalityConfigSpecifier as L;
    if let Some(p) = common.healthy_panic_threshold.as_ref() {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(ValidationError::new(
                "healthy_panic_threshold",
                "must be between 0 and 100",
            ));
        }
        out.healthy_panic_threshold = p.value;
    }
    match common.locality_config_specifier.as_ref() {
        None | Some(L::ZoneAwareLbConfig(_)) => {}
        Some(L::LocalityWeightedLbConfig(_)) => out.locality_weighted = true,
    }
    if common.close_connections_on_host_set_change {
        return Err(ValidationError::unsupported(
            "close_connections_on_host_set_change",
        ));
    }
    if let Some(h) = common.consistent_hashing_lb_config.as_ref() {
        consistent_hashing(h.use_hostname_for_hashing, h.hash_balance_factor.is_some())
            .map_err(|e| e.within("consistent_hashing_lb_config"))?;
    }
    out.ignore_new_hosts_until_first_hc = common.ignore_new_hosts_until_first_hc;
    Ok(())
}

fn consistent_hashing(use_hostname: bool, balance_factor: bool) -> Result<()> {
    if use_hostname {
        return Err(ValidationError::unsupported("use_hostname_for_hashing"));
    }
    if balance_factor {
        return Err(ValidationError::unsupported("hash_balance_factor"));
    }
    Ok(())
}

fn legacy_policy(c: &pb::Cluster) -> Result<LbPolicy> {
    use pb::cluster::{LbConfig as C, LbPolicy as L};
    let policy = match L::try_from(c.lb_policy) {
        Ok(L::RoundRobin) => LbPolicy::RoundRobin,
        Ok(L::LeastRequest) => {
            let (choice_count, bias) = match c.lb_config.as_ref() {
                Some(C::LeastRequestLbConfig(l)) => {
                    if l.slow_start_config.is_some() {
                        return Err(ValidationError::unsupported(
                            "least_request_lb_config.slow_start_config",
                        ));
                    }
                    (
                        l.choice_count.as_ref().map(|v| v.value),
                        l.active_request_bias.as_ref().map(|b| b.default_value),
                    )
                }
                _ => (None, None),
            };
            least_request(choice_count, bias, false)
                .map_err(|e| e.within("least_request_lb_config"))?
        }
        Ok(L::Random) => LbPolicy::Random,
        Ok(L::RingHash) => match c.lb_config.as_ref() {
            Some(C::RingHashLbConfig(r)) => {
                use pb::cluster::ring_hash_lb_config::HashFunction as H;
                if r.hash_function != H::XxHash as i32 {
                    return Err(ValidationError::new(
                        "ring_hash_lb_config.hash_function",
                        "only XX_HASH is supported",
                    ));
                }
                ring_hash(
                    r.minimum_ring_size.as_ref().map(|v| v.value),
                    r.maximum_ring_size.as_ref().map(|v| v.value),
                )
                .map_err(|e| e.within("ring_hash_lb_config"))?
            }
            _ => ring_hash(None, None)?,
        },
        Ok(L::Maglev) => match c.lb_config.as_ref() {
            Some(C::MaglevLbConfig(m)) => maglev(m.table_size.as_ref().map(|v| v.value))
                .map_err(|e| e.within("maglev_lb_config"))?,
            _ => maglev(None)?,
        },
        Ok(other) => {
            return Err(ValidationError::new(
                "lb_policy",
                format!("{} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => return Err(ValidationError::new("lb_policy", "unknown policy")),
    };
    let matching = match (c.lb_config.as_ref(), &policy) {
        (None, _) => true,
        (Some(C::LeastRequestLbConfig(_)), LbPolicy::LeastRequest { .. }) => true,
        (Some(C::RingHashLbConfig(_)), LbPolicy::RingHash { .. }) => true,
        (Some(C::MaglevLbConfig(_)), LbPolicy::Maglev { .. }) => true,
        (Some(C::RoundRobinLbConfig(r)), LbPolicy::RoundRobin) => {
            if r.slow_start_config.is_some() {
                return Err(ValidationError::unsupported(
                    "round_robin_lb_config.slow_start_config",
                ));
            }
            true
        }
        _ => false,
    };
    if !matching {
        let field = c.lb_config.as_ref().map_or("lb_config", lb_config_field);
        return Err(ValidationError::new(field, "does not match lb_policy"));
    }
    Ok(policy)
}

/// The field name of the `lb_config` oneof member that is set.
fn lb_config_field(c: &pb::cluster::LbConfig) -> &'static str {
    use pb::cluster::LbConfig as C;
    match c {
        C::RingHashLbConfig(_) => "ring_hash_lb_config",
        C::MaglevLbConfig(_) => "maglev_lb_config",
        C::OriginalDstLbConfig(_) => "original_dst_lb_config",
        C::LeastRequestLbConfig(_) => "least_request_lb_config",
        C::RoundRobinLbConfig(_) => "round_robin_lb_config",
    }
}

fn least_request(
    choice_count: Option<u32>,
    bias: Option<f64>,
    full_scan: bool,
) -> Result<LbPolicy> {
    let choice_count = choice_count.unwrap_or(2);
    if choice_count < 2 {
        return Err(ValidationError::new("choice_count", "must be at least 2"));
    }
    let active_request_bias = bias.unwrap_or(1.0);
    if !(active_request_bias >= 0.0 && active_request_bias.is_finite()) {
        return Err(ValidationError::new(
            "active_request_bias",
            "must be a non-negative number",
        ));
    }
    Ok(LbPolicy::LeastRequest {
        choice_count,
        active_request_bias,
        full_scan,
    })
}

fn ring_hash(min: Option<u64>, max: Option<u64>) -> Result<LbPolicy> {
    let min_ring_size = min.unwrap_or(DEFAULT_MIN_RING_SIZE);
    let max_ring_size = max.unwrap_or(DEFAULT_MAX_RING_SIZE);
    if min_ring_size == 0 || min_ring_size > DEFAULT_MAX_RING_SIZE {
        return Err(ValidationError::new(
            "minimum_ring_size",
            "must be between 1 and 8388608",
        ));
    }
    if max_ring_size > DEFAULT_MAX_RING_SIZE {
        return Err(ValidationError::new(
            "maximum_ring_size",
            "must be at most 8388608",
        ));
    }
    if min_ring_size > max_ring_size {
        return Err(ValidationError::new(
            "minimum_ring_size",
            "must not exceed maximum_ring_size",
        ));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size,
        max_ring_size,
    })
}

fn maglev(table_size: Option<u64>) -> Result<LbPolicy> {
    let table_size = table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
    if table_size > MAX_MAGLEV_TABLE_SIZE || !is_prime(table_size) {
        return Err(ValidationError::new(
            "table_size",
            "must be a prime number at most 5000011",
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The first supported policy of the list, and whether it weights localities.
fn typed_policy(typed: &pb::LoadBalancingPolicy, depth: usize) -> Result<(LbPolicy, bool)> {
    use policies::common::v3::locality_lb_config::LocalityConfigSpecifier as L;
    let locality = |c: Option<&policies::common::v3::LocalityLbConfig>| {
        matches!(
            c.and_then(|c| c.locality_config_specifier.as_ref()),
            Some(L::LocalityWeightedLbConfig(_))
        )
    };
    for (i, p) in typed.policies.iter().enumerate() {
        let path = format!("policies[{i}].typed_extension_config.typed_config");
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(ValidationError::required(format!(
                "policies[{i}].typed_extension_config.typed_config"
            )));
        };
        let chosen = match any.type_url.as_str() {
            LEAST_REQUEST => {
                let l: policies::least_request::v3::LeastRequest =
                    unpack_any(any, LEAST_REQUEST, &path)?;
                if l.slow_start_config.is_some() {
                    return Err(ValidationError::unsupported(format!(
                        "{path}.slow_start_config"
                    )));
                }
                use policies::least_request::v3::least_request::SelectionMethod as S;
                let full_scan = l.enable_full_scan.as_ref().is_some_and(|v| v.value)
                    || l.selection_method == S::FullScan as i32;
                let policy = least_request(
                    l.choice_count.as_ref().map(|v| v.value),
                    l.active_request_bias.as_ref().map(|b| b.default_value),
                    full_scan,
                )
                .map_err(|e| e.within(path.clone()))?;
                (policy, locality(l.locality_lb_config.as_ref()))
            }
            ROUND_ROBIN => {
                let r: policies::round_robin::v3::RoundRobin = unpack_any(any, ROUND_ROBIN, &path)?;
                if r.slow_start_config.is_some() {
                    return Err(ValidationError::unsupported(format!(
                        "{path}.slow_start_config"
                    )));
                }
                (
                    LbPolicy::RoundRobin,
                    locality(r.locality_lb_config.as_ref()),
                )
            }
            RANDOM => {
                let r: policies::random::v3::Random = unpack_any(any, RANDOM, &path)?;
                (LbPolicy::Random, locality(r.locality_lb_config.as_ref()))
            }
            RING_HASH => {
                let r: policies::ring_hash::v3::RingHash = unpack_any(any, RING_HASH, &path)?;
                use policies::ring_hash::v3::ring_hash::HashFunction as H;
                if !matches!(H::try_from(r.hash_function), Ok(H::DefaultHash | H::XxHash)) {
                    return Err(ValidationError::new(
                        format!("{path}.hash_function"),
                        "only XX_HASH (the default) is supported",
                    ));
                }
                #[allow(deprecated)]
                let (hostname, balance) =
                    (r.use_hostname_for_hashing, r.hash_balance_factor.is_some());
                consistent_hashing(hostname, balance).map_err(|e| e.within(path.clone()))?;
                if let Some(h) = r.consistent_hashing_lb_config.as_ref() {
                    consistent_hashing(h.use_hostname_for_hashing, h.hash_balance_factor.is_some())
                        .map_err(|e| e.within(format!("{path}.consistent_hashing_lb_config")))?;
                }
                let policy = ring_hash(
                    r.minimum_ring_size.as_ref().map(|v| v.value),
                    r.maximum_ring_size.as_ref().map(|v| v.value),
                )
                .map_err(|e| e.within(path.clone()))?;
                (policy, r.locality_weighted_lb_config.is_some())
            }
            MAGLEV => {
                let m: policies::maglev::v3::Maglev = unpack_any(any, MAGLEV, &path)?;
                if let Some(h) = m.consistent_hashing_lb_config.as_ref() {
                    consistent_hashing(h.use_hostname_for_hashing, h.hash_balance_factor.is_some())
                        .map_err(|e| e.within(format!("{path}.consistent_hashing_lb_config")))?;
                }
                let policy = maglev(m.table_size.as_ref().map(|v| v.value))
                    .map_err(|e| e.within(path.clone()))?;
                (policy, m.locality_weighted_lb_config.is_some())
            }
            WRR_LOCALITY if depth == 0 => {
                let w: policies::wrr_locality::v3::WrrLocality =
                    unpack_any(any, WRR_LOCALITY, &path)?;
                let inner = w.endpoint_picking_policy.as_ref().ok_or_else(|| {
                    ValidationError::required(format!("{path}.endpoint_picking_policy"))
                })?;
                let (policy, _) = typed_policy(inner, depth + 1)
                    .map_err(|e| e.within(format!("{path}.endpoint_picking_policy")))?;
                (policy, true)
            }
            // Not one Sluice implements: Envoy moves on to the next.
            _ => continue,
        };
        return Ok(chosen);
    }
    Err(ValidationError::new(
        "policies",
        "none of the policies is supported (round_robin, least_request, random, ring_hash, maglev, wrr_locality)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<LbConfig> {
        let c: pb::Cluster = crate::decode::from_yaml(yaml, "envoy.config.cluster.v3.Cluster")?;
        lb_config(&c)
    }

    #[test]
    fn defaults_are_envoys() {
        let c = config("name: a").unwrap();
        assert_eq!(c, LbConfig::default());
        assert_eq!(
            config("name: a\nlb_policy: RING_HASH").unwrap().policy,
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 * 1024 * 1024
            }
        );
        assert_eq!(
            config("name: a\nlb_policy: MAGLEV").unwrap().policy,
            LbPolicy::Maglev { table_size: 65537 }
        );
    }

    #[test]
    fn the_first_supported_typed_policy_wins() {
        let c = config(
            r#"name: a
load_balancing_policy:
  policies:
  - typed_extension_config:
      name: custom
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin
  - typed_extension_config:
      name: envoy.load_balancing_policies.least_request
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest
        choice_count: 3
        locality_lb_config: {locality_weighted_lb_config: {}}
  - typed_extension_config:
      name: envoy.load_balancing_policies.maglev
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev
"#,
        )
        .unwrap();
        assert_eq!(
            c.policy,
            LbPolicy::LeastRequest {
                choice_count: 3,
                active_request_bias: 1.0,
                full_scan: false
            }
        );
        assert!(c.locality_weighted);
    }

    #[test]
    fn a_list_without_supported_policies_is_refused() {
        let err = config(
            r#"name: a
load_balancing_policy:
  policies:
  - typed_extension_config:
      name: custom
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst
"#,
        )
        .unwrap_err();
        assert_eq!(err.path, "load_balancing_policy.policies");
    }

    #[test]
    fn bad_sizes_and_thresholds_are_named() {
        let err = config("name: a\nlb_policy: MAGLEV\nmaglev_lb_config: {table_size: 65536}")
            .unwrap_err();
        assert_eq!(err.path, "maglev_lb_config.table_size");
        let err = config(
            "name: a\nlb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 10, maximum_ring_size: 5}",
        )
        .unwrap_err();
        assert_eq!(err.path, "ring_hash_lb_config.minimum_ring_size");
        let err = config("name: a\ncommon_lb_config: {healthy_panic_threshold: {value: 150}}")
            .unwrap_err();
        assert_eq!(err.path, "common_lb_config.healthy_panic_threshold");
        let err = config("name: a\nlb_policy: RANDOM\nleast_request_lb_config: {}").unwrap_err();
        assert_eq!(err.path, "least_request_lb_config");
    }
}
