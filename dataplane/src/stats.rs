//! Counters and gauges, named as Envoy names them so dashboards carry over.
//!
//! Each metric is one `prometheus-client` handle (an `Arc`'d atomic) held by the code that
//! updates it; the hot path never takes a lock. The registry and the flat name index used
//! by `/stats` sit behind a mutex touched only when a listener or cluster is created and
//! when the admin endpoints render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The process-wide metric registry.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    registry: Registry,
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    gauges: BTreeMap<&'static str, Family<Labels, Gauge>>,
    /// Envoy-style flat names (`cluster.web.upstream_rq_total`) for `/stats`.
    flat: BTreeMap<String, Metric>,
}

#[derive(Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

/// Response code classes, indexed by `status / 100 - 1`.
pub const CODE_CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

/// Counters of one HTTP connection manager (Envoy's `http.<stat_prefix>.*`).
#[derive(Clone)]
pub struct HttpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_overflow: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_xx: [Counter; 5],
    pub downstream_rq_timeout: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub requests_rejected_with_underscores_in_headers: Counter,
    pub dropped_headers_with_underscores: Counter,
    /// Requests answered 503 by stop_accepting_requests.
    pub downstream_rq_overload_close: Counter,
    /// Connections told to close (HTTP/1) or drained (HTTP/2) by disable_http_keepalive.
    pub downstream_cx_overload_disable_keepalive: Counter,
}

/// Counters of one listener (Envoy's `listener.<address>.*`).
#[derive(Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    /// Connections closed at accept because the global cap was reached.
    pub downstream_global_cx_overflow: Counter,
    /// Connections closed at accept by reject_incoming_connections or tcp_listener_accept.
    pub downstream_cx_overload_reject: Counter,
    pub no_filter_chain_match: Counter,
    /// Listener filters timed out (Envoy's `downstream_pre_cx_timeout`).
    pub downstream_pre_cx_timeout: Counter,
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
}

/// Counters of one TCP proxy (Envoy's `tcp.<stat_prefix>.*`).
#[derive(Clone)]
pub struct TcpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
    pub max_downstream_connection_duration: Counter,
    /// The cluster does not exist (connect failures count in the cluster's stats).
    pub downstream_cx_no_route: Counter,
}

/// Counters of one cluster (Envoy's `cluster.<name>.*`).
#[derive(Clone)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_xx: [Counter; 5],
    pub upstream_rq_retry: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub membership_total: Gauge,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    /// A request found the cluster at `max_connections` (it waited as pending).
    pub upstream_cx_overflow: Counter,
    /// Requests refused by `max_pending_requests` or `max_requests` (503 `UO`).
    pub upstream_rq_pending_overflow: Counter,
    /// Retries refused by `max_retries` or the retry budget.
    pub upstream_rq_retry_overflow: Counter,
    /// Hosts eligible for traffic (no failure flag).
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    /// Hosts that take no traffic and do not count (e.g. waiting for a first health check).
    pub membership_excluded: Gauge,
    pub membership_change: Counter,
    /// Picks made in panic mode (too few healthy hosts: all hosts were used).
    pub lb_healthy_panic: Counter,
}

/// Active health-check counters of one cluster (Envoy's `cluster.<name>.health_check.*`).
#[derive(Clone)]
pub struct HealthCheckStats {
    pub attempt: Counter,
    pub success: Counter,
    /// Every failed check, network failures included.
    pub failure: Counter,
    pub network_failure: Counter,
    /// Hosts the checks consider healthy.
    pub healthy: Gauge,
}

/// Outlier-detection counters of one cluster (`cluster.<name>.outlier_detection.*`).
#[derive(Clone)]
pub struct OutlierStats {
    pub ejections_active: Gauge,
    pub ejections_overflow: Counter,
    pub ejections_enforced_total: Counter,
    /// Envoy's deprecated total: ejections allowed by `max_ejection_percent`, enforced or not.
    pub ejections_total: Counter,
    /// `(detected, enforced)` per ejection type, in [`crate::upstream::outlier::Kind`] order.
    pub by_kind: Vec<(Counter, Counter)>,
    /// Envoy's deprecated per-type counters of detections.
    pub ejections_consecutive_5xx: Counter,
    pub ejections_success_rate: Counter,
}

impl Stats {
    /// A fresh, empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn counter(&self, family: &'static str, help: &str, labels: Labels, flat: String) -> Counter {
        let mut inner = self.inner.lock().expect("stats lock");
        let fam = match inner.counters.get(family) {
            Some(fam) => fam.clone(),
            None => {
                let fam = Family::<Labels, Counter>::default();
                inner
                    .registry
                    .register(family, help.to_string(), fam.clone());
                inner.counters.insert(family, fam.clone());
                fam
            }
        };
        let c = fam.get_or_create(&labels).clone();
        inner.flat.insert(flat, Metric::Counter(c.clone()));
        c
    }

    fn gauge(&self, family: &'static str, help: &str, labels: Labels, flat: String) -> Gauge {
        let mut inner = self.inner.lock().expect("stats lock");
        let fam = match inner.gauges.get(family) {
            Some(fam) => fam.clone(),
            None => {
                let fam = Family::<Labels, Gauge>::default();
                inner
                    .registry
                    .register(family, help.to_string(), fam.clone());
                inner.gauges.insert(family, fam.clone());
                fam
            }
        };
        let g = fam.get_or_create(&labels).clone();
        inner.flat.insert(flat, Metric::Gauge(g.clone()));
        g
    }

    /// The counters of the connection manager with this `stat_prefix` (shared by name).
    pub fn http(&self, prefix: &str) -> HttpStats {
        let l = || {
            vec![(
                "envoy_http_conn_manager_prefix".to_string(),
                prefix.to_string(),
            )]
        };
        let name = |n: &str| format!("http.{prefix}.{n}");
        let class = |i: usize| {
            let mut labels = l();
            labels.push(("envoy_response_code_class".into(), CODE_CLASSES[i].into()));
            self.counter(
                "envoy_http_downstream_rq_xx",
                "Downstream responses by code class",
                labels,
                name(&format!("downstream_rq_{}xx", CODE_CLASSES[i])),
            )
        };
        HttpStats {
            downstream_cx_total: self.counter(
                "envoy_http_downstream_cx",
                "Downstream connections accepted",
                l(),
                name("downstream_cx_total"),
            ),
            downstream_cx_active: self.gauge(
                "envoy_http_downstream_cx_active",
                "Open downstream connections",
                l(),
                name("downstream_cx_active"),
            ),
            downstream_cx_overflow: self.counter(
                "envoy_http_downstream_cx_overflow",
                "Connections refused by the connection limit",
                l(),
                name("downstream_cx_overflow"),
            ),
            downstream_rq_total: self.counter(
                "envoy_http_downstream_rq",
                "Downstream requests",
                l(),
                name("downstream_rq_total"),
            ),
            downstream_rq_active: self.gauge(
                "envoy_http_downstream_rq_active",
                "Downstream requests in flight",
                l(),
                name("downstream_rq_active"),
            ),
            downstream_rq_xx: [class(0), class(1), class(2), class(3), class(4)],
            downstream_rq_timeout: self.counter(
                "envoy_http_downstream_rq_timeout",
                "Requests whose headers timed out (408)",
                l(),
                name("downstream_rq_timeout"),
            ),
            no_route: self.counter(
                "envoy_http_no_route",
                "Requests matching no route",
                l(),
                name("no_route"),
            ),
            no_cluster: self.counter(
                "envoy_http_no_cluster",
                "Requests routed to a missing cluster",
                l(),
                name("no_cluster"),
            ),
            requests_rejected_with_underscores_in_headers: self.counter(
                "envoy_http_requests_rejected_with_underscores_in_headers",
                "Requests refused for a header name with an underscore",
                l(),
                name("requests_rejected_with_underscores_in_headers"),
            ),
            dropped_headers_with_underscores: self.counter(
                "envoy_http_dropped_headers_with_underscores",
                "Request headers dropped for an underscore in their name",
                l(),
                name("dropped_headers_with_underscores"),
            ),
            downstream_rq_overload_close: self.counter(
                "envoy_http_downstream_rq_overload_close",
                "Requests refused by the overload manager (503)",
                l(),
                name("downstream_rq_overload_close"),
            ),
            downstream_cx_overload_disable_keepalive: self.counter(
                "envoy_http_downstream_cx_overload_disable_keepalive",
                "Connections closed or drained by the overload manager",
                l(),
                name("downstream_cx_overload_disable_keepalive"),
            ),
        }
    }

    /// The counters of the listener on `address` (shared across updates).
    pub fn listener(&self, address: &str) -> ListenerStats {
        let l = || vec![("envoy_listener_address".to_string(), address.to_string())];
        let c = |family: &'static str, help: &str, stat: &str| {
            self.counter(family, help, l(), format!("listener.{address}.{stat}"))
        };
        ListenerStats {
            downstream_cx_total: c(
                "envoy_listener_downstream_cx",
                "Connections accepted",
                "downstream_cx_total",
            ),
            downstream_global_cx_overflow: c(
                "envoy_listener_downstream_global_cx_overflow",
                "Connections closed at accept because the global connection cap was reached",
                "downstream_global_cx_overflow",
            ),
            downstream_cx_overload_reject: c(
                "envoy_listener_downstream_cx_overload_reject",
                "Connections closed at accept by the overload manager",
                "downstream_cx_overload_reject",
            ),
            no_filter_chain_match: c(
                "envoy_listener_no_filter_chain_match",
                "Connections no filter chain took",
                "no_filter_chain_match",
            ),
            downstream_pre_cx_timeout: c(
                "envoy_listener_downstream_pre_cx_timeout",
                "Connections closed when the listener filters timed out",
                "downstream_pre_cx_timeout",
            ),
            ssl_handshake: c(
                "envoy_listener_ssl_handshake",
                "Completed TLS handshakes",
                "ssl.handshake",
            ),
            ssl_connection_error: c(
                "envoy_listener_ssl_connection_error",
                "Failed TLS handshakes",
                "ssl.connection_error",
            ),
        }
    }

    /// The counters of the TCP proxy with this `stat_prefix` (shared by name).
    pub fn tcp(&self, prefix: &str) -> TcpStats {
        let l = || vec![("envoy_tcp_prefix".to_string(), prefix.to_string())];
        let c = |family: &'static str, help: &str, stat: &str| {
            self.counter(family, help, l(), format!("tcp.{prefix}.{stat}"))
        };
        TcpStats {
            downstream_cx_total: c(
                "envoy_tcp_downstream_cx",
                "Connections proxied",
                "downstream_cx_total",
            ),
            downstream_cx_rx_bytes_total: c(
                "envoy_tcp_downstream_cx_rx_bytes",
                "Bytes received from downstream",
                "downstream_cx_rx_bytes_total",
            ),
            downstream_cx_tx_bytes_total: c(
                "envoy_tcp_downstream_cx_tx_bytes",
                "Bytes sent to downstream",
                "downstream_cx_tx_bytes_total",
            ),
            idle_timeout: c(
                "envoy_tcp_idle_timeout",
                "Connections closed by the idle timeout",
                "idle_timeout",
            ),
            max_downstream_connection_duration: c(
                "envoy_tcp_max_downstream_connection_duration",
                "Connections closed by max_downstream_connection_duration",
                "max_downstream_connection_duration",
            ),
            downstream_cx_no_route: c(
                "envoy_tcp_downstream_cx_no_route",
                "Connections whose cluster does not exist",
                "downstream_cx_no_route",
            ),
        }
    }

    /// The counters of the cluster with this name (shared by name across updates).
    pub fn cluster(&self, cluster: &str) -> ClusterStats {
        let l = || vec![("envoy_cluster_name".to_string(), cluster.to_string())];
        let name = |n: &str| format!("cluster.{cluster}.{n}");
        let class = |i: usize| {
            let mut labels = l();
            labels.push(("envoy_response_code_class".into(), CODE_CLASSES[i].into()));
            self.counter(
                "envoy_cluster_upstream_rq_xx",
                "Upstream responses by code class",
                labels,
                name(&format!("upstream_rq_{}xx", CODE_CLASSES[i])),
            )
        };
        ClusterStats {
            upstream_rq_total: self.counter(
                "envoy_cluster_upstream_rq",
                "Upstream requests",
                l(),
                name("upstream_rq_total"),
            ),
            upstream_rq_active: self.gauge(
                "envoy_cluster_upstream_rq_active",
                "Upstream requests in flight",
                l(),
                name("upstream_rq_active"),
            ),
            upstream_rq_xx: [class(0), class(1), class(2), class(3), class(4)],
            upstream_rq_retry: self.counter(
                "envoy_cluster_upstream_rq_retry",
                "Retries",
                l(),
                name("upstream_rq_retry"),
            ),
            upstream_rq_timeout: self.counter(
                "envoy_cluster_upstream_rq_timeout",
                "Requests that timed out",
                l(),
                name("upstream_rq_timeout"),
            ),
            upstream_rq_per_try_timeout: self.counter(
                "envoy_cluster_upstream_rq_per_try_timeout",
                "Tries that timed out",
                l(),
                name("upstream_rq_per_try_timeout"),
            ),
            upstream_cx_connect_fail: self.counter(
                "envoy_cluster_upstream_cx_connect_fail",
                "Failed upstream connects",
                l(),
                name("upstream_cx_connect_fail"),
            ),
            upstream_rq_retry_limit_exceeded: self.counter(
                "envoy_cluster_upstream_rq_retry_limit_exceeded",
                "Requests that ran out of retries",
                l(),
                name("upstream_rq_retry_limit_exceeded"),
            ),
            upstream_cx_none_healthy: self.counter(
                "envoy_cluster_upstream_cx_none_healthy",
                "Requests with no healthy endpoint",
                l(),
                name("upstream_cx_none_healthy"),
            ),
            membership_total: self.gauge(
                "envoy_cluster_membership_total",
                "Endpoints in the cluster",
                l(),
                name("membership_total"),
            ),
            upstream_cx_total: self.counter(
                "envoy_cluster_upstream_cx",
                "Upstream connections made",
                l(),
                name("upstream_cx_total"),
            ),
            upstream_cx_active: self.gauge(
                "envoy_cluster_upstream_cx_active",
                "Open upstream connections",
                l(),
                name("upstream_cx_active"),
            ),
            upstream_cx_overflow: self.counter(
                "envoy_cluster_upstream_cx_overflow",
                "Times the cluster's max_connections was reached",
                l(),
                name("upstream_cx_overflow"),
            ),
            upstream_rq_pending_overflow: self.counter(
                "envoy_cluster_upstream_rq_pending_overflow",
                "Requests refused by the circuit breakers (503 UO)",
                l(),
                name("upstream_rq_pending_overflow"),
            ),
            upstream_rq_retry_overflow: self.counter(
                "envoy_cluster_upstream_rq_retry_overflow",
                "Retries refused by max_retries or the retry budget",
                l(),
                name("upstream_rq_retry_overflow"),
            ),
            membership_healthy: self.gauge(
                "envoy_cluster_membership_healthy",
                "Endpoints eligible for traffic",
                l(),
                name("membership_healthy"),
            ),
            membership_degraded: self.gauge(
                "envoy_cluster_membership_degraded",
                "Degraded endpoints",
                l(),
                name("membership_degraded"),
            ),
            membership_excluded: self.gauge(
                "envoy_cluster_membership_excluded",
                "Endpoints excluded from load balancing",
                l(),
                name("membership_excluded"),
            ),
            membership_change: self.counter(
                "envoy_cluster_membership_change",
                "Changes of the cluster's endpoints",
                l(),
                name("membership_change"),
            ),
            lb_healthy_panic: self.counter(
                "envoy_cluster_lb_healthy_panic",
                "Requests balanced in panic mode (over all hosts)",
                l(),
                name("lb_healthy_panic"),
            ),
        }
    }

    fn cluster_counter(
        &self,
        cluster: &str,
        family: &'static str,
        stat: &str,
        help: &str,
    ) -> Counter {
        let labels = vec![("envoy_cluster_name".to_string(), cluster.to_string())];
        self.counter(family, help, labels, format!("cluster.{cluster}.{stat}"))
    }

    fn cluster_gauge(&self, cluster: &str, family: &'static str, stat: &str, help: &str) -> Gauge {
        let labels = vec![("envoy_cluster_name".to_string(), cluster.to_string())];
        self.gauge(family, help, labels, format!("cluster.{cluster}.{stat}"))
    }

    /// The health-check counters of a cluster that has active health checks.
    pub fn health_check(&self, cluster: &str) -> HealthCheckStats {
        let c = |family, stat, help| self.cluster_counter(cluster, family, stat, help);
        HealthCheckStats {
            attempt: c(
                "envoy_cluster_health_check_attempt",
                "health_check.attempt",
                "Health checks started",
            ),
            success: c(
                "envoy_cluster_health_check_success",
                "health_check.success",
                "Health checks passed",
            ),
            failure: c(
                "envoy_cluster_health_check_failure",
                "health_check.failure",
                "Health checks failed",
            ),
            network_failure: c(
                "envoy_cluster_health_check_network_failure",
                "health_check.network_failure",
                "Health checks failed by a connection error or timeout",
            ),
            healthy: self.cluster_gauge(
                cluster,
                "envoy_cluster_health_check_healthy",
                "health_check.healthy",
                "Hosts passing health checks",
            ),
        }
    }

    /// The outlier-detection counters of a cluster that has outlier detection.
    pub fn outlier(&self, cluster: &str) -> OutlierStats {
        let c = |family, stat, help| self.cluster_counter(cluster, family, stat, help);
        let by_kind = crate::upstream::outlier::Kind::ALL
            .iter()
            .map(|kind| {
                let name = kind.stat_name();
                let labels = || {
                    vec![
                        ("envoy_cluster_name".to_string(), cluster.to_string()),
                        ("envoy_ejection_type".to_string(), name.to_string()),
                    ]
                };
                (
                    self.counter(
                        "envoy_cluster_outlier_detection_ejections_detected",
                        "Outliers detected, by type",
                        labels(),
                        format!("cluster.{cluster}.outlier_detection.ejections_detected_{name}"),
                    ),
                    self.counter(
                        "envoy_cluster_outlier_detection_ejections_enforced",
                        "Outliers ejected, by type",
                        labels(),
                        format!("cluster.{cluster}.outlier_detection.ejections_enforced_{name}"),
                    ),
                )
            })
            .collect();
        OutlierStats {
            ejections_active: self.cluster_gauge(
                cluster,
                "envoy_cluster_outlier_detection_ejections_active",
                "outlier_detection.ejections_active",
                "Hosts ejected now",
            ),
            ejections_overflow: c(
                "envoy_cluster_outlier_detection_ejections_overflow",
                "outlier_detection.ejections_overflow",
                "Ejections refused by max_ejection_percent",
            ),
            ejections_enforced_total: c(
                "envoy_cluster_outlier_detection_ejections_enforced_all",
                "outlier_detection.ejections_enforced_total",
                "Hosts ejected",
            ),
            ejections_total: c(
                "envoy_cluster_outlier_detection_ejections",
                "outlier_detection.ejections_total",
                "Ejections within max_ejection_percent, enforced or not (deprecated in Envoy)",
            ),
            by_kind,
            ejections_consecutive_5xx: c(
                "envoy_cluster_outlier_detection_ejections_consecutive_5xx",
                "outlier_detection.ejections_consecutive_5xx",
                "Consecutive-5xx outliers detected (deprecated in Envoy)",
            ),
            ejections_success_rate: c(
                "envoy_cluster_outlier_detection_ejections_success_rate",
                "outlier_detection.ejections_success_rate",
                "Success-rate outliers detected (deprecated in Envoy)",
            ),
        }
    }

    /// An HTTP filter's counter under its connection manager: `http.<hcm_prefix>.<name>`
    /// (e.g. `rbac.denied`), one Prometheus family with the name as a label.
    pub fn filter_counter(&self, hcm_prefix: &str, name: &str) -> Counter {
        self.counter(
            "envoy_http_filter",
            "HTTP filter events, by connection manager and Envoy stat name",
            vec![
                (
                    "envoy_http_conn_manager_prefix".to_string(),
                    hcm_prefix.to_string(),
                ),
                ("name".to_string(), name.to_string()),
            ],
            format!("http.{hcm_prefix}.{name}"),
        )
    }

    /// A counter with a filter's own stat prefix (`flat` is Envoy's full name, `event`
    /// its last part, a label of `family`).
    pub fn named_counter(
        &self,
        family: &'static str,
        prefix: &str,
        flat: &str,
        event: &str,
    ) -> Counter {
        self.counter(
            family,
            "HTTP filter events, by the filter's stat prefix",
            vec![
                ("stat_prefix".to_string(), prefix.to_string()),
                ("event".to_string(), event.to_string()),
            ],
            flat.to_string(),
        )
    }

    /// An OpenTelemetry access logger's record counter, named as Envoy's:
    /// `access_logs.open_telemetry_access_log.<stat_prefix><event>`.
    pub fn otlp_log_counter(&self, stat_prefix: &str, event: &str, help: &str) -> Counter {
        self.counter(
            "sluice_access_log_open_telemetry_records",
            help,
            vec![
                ("stat_prefix".to_string(), stat_prefix.to_string()),
                ("event".to_string(), event.to_string()),
            ],
            format!("access_logs.open_telemetry_access_log.{stat_prefix}{event}"),
        )
    }

    /// An access log sink's line counter: `access_log.<event>`.
    pub fn access_log_counter(&self, event: &str, help: &str) -> Counter {
        self.counter(
            "sluice_access_log_lines",
            help,
            vec![("event".to_string(), event.to_string())],
            format!("access_log.{event}"),
        )
    }

    /// The OpenTelemetry tracer's span counters (`tracing.opentelemetry.spans_sent`, …).
    pub fn tracing_counter(&self, event: &str, help: &str) -> Counter {
        self.counter(
            "sluice_tracing_opentelemetry_spans",
            help,
            vec![("event".to_string(), event.to_string())],
            format!("tracing.opentelemetry.spans_{event}"),
        )
    }

    /// An overload action's gauges: `overload.<action>.active` (1 when saturated) and
    /// `overload.<action>.scale_percent` (its state, 0 to 100).
    pub fn overload_action(&self, action: &str) -> (Gauge, Gauge) {
        let l = || vec![("envoy_overload_action".to_string(), action.to_string())];
        (
            self.gauge(
                "envoy_overload_active",
                "Overload action saturated (1) or not (0)",
                l(),
                format!("overload.{action}.active"),
            ),
            self.gauge(
                "envoy_overload_scale_percent",
                "Overload action state, 0 to 100",
                l(),
                format!("overload.{action}.scale_percent"),
            ),
        )
    }

    /// A resource monitor's pressure as a percent (`overload.<monitor>.pressure`).
    pub fn overload_monitor_pressure(&self, monitor: &str) -> Gauge {
        self.gauge(
            "envoy_overload_pressure",
            "Resource monitor pressure, percent",
            vec![("envoy_resource_monitor".to_string(), monitor.to_string())],
            format!("overload.{monitor}.pressure"),
        )
    }

    /// Samples a monitor could not take (`overload.<monitor>.failed_updates`).
    pub fn overload_monitor_failed_updates(&self, monitor: &str) -> Counter {
        self.counter(
            "envoy_overload_failed_updates",
            "Resource monitor samples that failed",
            vec![("envoy_resource_monitor".to_string(), monitor.to_string())],
            format!("overload.{monitor}.failed_updates"),
        )
    }

    /// Times the shrink_heap action returned memory (`overload.<action>.shrink_count`).
    pub fn overload_shrink_count(&self, action: &str) -> Counter {
        self.counter(
            "envoy_overload_shrink_count",
            "Times free heap was returned to the system",
            vec![("envoy_overload_action".to_string(), action.to_string())],
            format!("overload.{action}.shrink_count"),
        )
    }

    /// A counter per response flag (`UF`, `UT`, …), for operators to alert on.
    pub fn response_flag(&self, flag: &str) -> Counter {
        self.counter(
            "sluice_http_downstream_rq_response_flag",
            "Downstream requests by Envoy response flag",
            vec![("envoy_response_flag".to_string(), flag.to_string())],
            format!("http.response_flag.{flag}"),
        )
    }

    /// Envoy's `/stats` text: `name: value` lines, sorted.
    pub fn render_text(&self) -> String {
        let inner = self.inner.lock().expect("stats lock");
        let mut out = String::new();
        for (name, metric) in &inner.flat {
            let value = match metric {
                Metric::Counter(c) => c.get() as i64,
                Metric::Gauge(g) => g.get(),
            };
            out.push_str(&format!("{name}: {value}\n"));
        }
        out
    }

    /// Prometheus/OpenMetrics text exposition.
    pub fn render_prometheus(&self) -> String {
        let inner = self.inner.lock().expect("stats lock");
        let mut out = String::new();
        encode(&mut out, &inner.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Index of a status code's class in [`CODE_CLASSES`].
pub fn class_index(status: u16) -> usize {
    (usize::from(status / 100).clamp(1, 5)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_by_name_and_rendered_in_both_formats() {
        let stats = Stats::new();
        let a = stats.cluster("web");
        let b = stats.cluster("web");
        a.upstream_rq_total.inc();
        b.upstream_rq_total.inc();
        a.upstream_rq_xx[class_index(503)].inc();
        let text = stats.render_text();
        assert!(
            text.contains("cluster.web.upstream_rq_total: 2\n"),
            "{text}"
        );
        assert!(text.contains("cluster.web.upstream_rq_5xx: 1\n"), "{text}");
        let prom = stats.render_prometheus();
        assert!(
            prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"web\"} 2"),
            "{prom}"
        );
    }
}
