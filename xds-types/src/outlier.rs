//! A cluster's passive health checking (`outlier_detection`), with Envoy's defaults.

use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::cluster::v3 as pb;
use crate::pb::google::protobuf::UInt32Value;
use crate::util::duration;

/// When hosts are ejected for the errors they return, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    /// Percent chance a detected consecutive-5xx outlier is ejected.
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    /// Envoy's default is 0: gateway failures are detected and counted, never ejected.
    pub enforcing_consecutive_gateway_failure: u32,
    /// Count connection failures and timeouts apart from the upstream's own 5xx.
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    /// How often ejections are reviewed (success rate, failure percentage, unejection).
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts however often the host was ejected.
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    /// Eject one host even when that exceeds `max_ejection_percent`.
    pub always_eject_one_host: bool,
    pub success_rate: SuccessRate,
    pub failure_percentage: FailurePercentage,
    /// A passing active health check returns an ejected host to service.
    pub successful_active_health_check_uneject_host: bool,
}

/// Ejects hosts whose success rate is far below the cluster's mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// In thousandths of a standard deviation (1900: 1.9).
    pub stdev_factor: u32,
    pub enforcing: u32,
    pub enforcing_local_origin: u32,
}

/// Ejects hosts whose failure percentage reaches a threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentage {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub enforcing: u32,
    pub enforcing_local_origin: u32,
}

impl Default for OutlierDetection {
    /// Envoy's defaults, as an empty `outlier_detection: {}` gives them.
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            success_rate: SuccessRate {
                minimum_hosts: 5,
                request_volume: 100,
                stdev_factor: 1900,
                enforcing: 100,
                enforcing_local_origin: 100,
            },
            failure_percentage: FailurePercentage {
                threshold: 85,
                minimum_hosts: 5,
                request_volume: 50,
                enforcing: 0,
                enforcing_local_origin: 0,
            },
            successful_active_health_check_uneject_host: true,
        }
    }
}

impl TryFrom<&pb::OutlierDetection> for OutlierDetection {
    type Error = ValidationError;

    fn try_from(o: &pb::OutlierDetection) -> Result<Self> {
        let d = Self::default();
        let count = |v: Option<&UInt32Value>, default: u32| v.map_or(default, |v| v.value);
        let percent = |v: Option<&UInt32Value>, field: &str, default: u32| {
            let value = count(v, default);
            if value > 100 {
                return Err(ValidationError::new(field, "must be at most 100"));
            }
            Ok(value)
        };
        let time = |v: Option<&crate::pb::google::protobuf::Duration>, field: &str, default| match v
        {
            None => Ok(default),
            Some(v) => {
                let t = duration(v, field)?;
                if t.is_zero() && field != "max_ejection_time_jitter" {
                    return Err(ValidationError::new(field, "must be greater than 0"));
                }
                Ok(t)
            }
        };
        let base_ejection_time = time(
            o.base_ejection_time.as_ref(),
            "base_ejection_time",
            d.base_ejection_time,
        )?;
        let max_ejection_time = match o.max_ejection_time.as_ref() {
            // Unset: 300s, or the base time when that is longer.
            None => d.max_ejection_time.max(base_ejection_time),
            Some(_) => {
                let t = time(
                    o.max_ejection_time.as_ref(),
                    "max_ejection_time",
                    d.max_ejection_time,
                )?;
                if t < base_ejection_time {
                    return Err(ValidationError::new(
                        "max_ejection_time",
                        "must not be less than base_ejection_time",
                    ));
                }
                t
            }
        };
        Ok(Self {
            consecutive_5xx: count(o.consecutive_5xx.as_ref(), d.consecutive_5xx),
            enforcing_consecutive_5xx: percent(
                o.enforcing_consecutive_5xx.as_ref(),
                "enforcing_consecutive_5xx",
                d.enforcing_consecutive_5xx,
            )?,
            consecutive_gateway_failure: count(
                o.consecutive_gateway_failure.as_ref(),
                d.consecutive_gateway_failure,
            ),
            enforcing_consecutive_gateway_failure: percent(
                o.enforcing_consecutive_gateway_failure.as_ref(),
                "enforcing_consecutive_gateway_failure",
                d.enforcing_consecutive_gateway_failure,
            )?,
            split_external_local_origin_errors: o.split_external_local_origin_errors,
            consecutive_local_origin_failure: count(
                o.consecutive_local_origin_failure.as_ref(),
                d.consecutive_local_origin_failure,
            ),
            enforcing_consecutive_local_origin_failure: percent(
                o.enforcing_consecutive_local_origin_failure.as_ref(),
                "enforcing_consecutive_local_origin_failure",
                d.enforcing_consecutive_local_origin_failure,
            )?,
            interval: time(o.interval.as_ref(), "interval", d.interval)?,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: time(
                o.max_ejection_time_jitter.as_ref(),
                "max_ejection_time_jitter",
                d.max_ejection_time_jitter,
            )?,
            max_ejection_percent: percent(
                o.max_ejection_percent.as_ref(),
                "max_ejection_percent",
                d.max_ejection_percent,
            )?,
            always_eject_one_host: o.always_eject_one_host.as_ref().is_some_and(|v| v.value),
            success_rate: SuccessRate {
                minimum_hosts: count(
                    o.success_rate_minimum_hosts.as_ref(),
                    d.success_rate.minimum_hosts,
                ),
                request_volume: count(
                    o.success_rate_request_volume.as_ref(),
                    d.success_rate.request_volume,
                ),
                stdev_factor: count(
                    o.success_rate_stdev_factor.as_ref(),
                    d.success_rate.stdev_factor,
                ),
                enforcing: percent(
                    o.enforcing_success_rate.as_ref(),
                    "enforcing_success_rate",
                    d.success_rate.enforcing,
                )?,
                enforcing_local_origin: percent(
                    o.enforcing_local_origin_success_rate.as_ref(),
                    "enforcing_local_origin_success_rate",
                    d.success_rate.enforcing_local_origin,
                )?,
            },
            failure_percentage: FailurePercentage {
                threshold: percent(
                    o.failure_percentage_threshold.as_ref(),
                    "failure_percentage_threshold",
                    d.failure_percentage.threshold,
                )?,
                minimum_hosts: count(
                    o.failure_percentage_minimum_hosts.as_ref(),
                    d.failure_percentage.minimum_hosts,
                ),
                request_volume: count(
                    o.failure_percentage_request_volume.as_ref(),
                    d.failure_percentage.request_volume,
                ),
                enforcing: percent(
                    o.enforcing_failure_percentage.as_ref(),
                    "enforcing_failure_percentage",
                    d.failure_percentage.enforcing,
                )?,
                enforcing_local_origin: percent(
                    o.enforcing_failure_percentage_local_origin.as_ref(),
                    "enforcing_failure_percentage_local_origin",
                    d.failure_percentage.enforcing_local_origin,
                )?,
            },
            successful_active_health_check_uneject_host: o
                .successful_active_health_check_uneject_host
                .as_ref()
                .is_none_or(|v| v.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(yaml: &str) -> Result<OutlierDetection> {
        let o: pb::OutlierDetection =
            crate::decode::from_yaml(yaml, "envoy.config.cluster.v3.OutlierDetection")?;
        OutlierDetection::try_from(&o)
    }

    #[test]
    fn empty_means_envoys_defaults() {
        assert_eq!(detection("{}").unwrap(), OutlierDetection::default());
        // A long base time raises the default cap with it.
        let o = detection("base_ejection_time: 600s").unwrap();
        assert_eq!(o.max_ejection_time, Duration::from_secs(600));
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            detection("max_ejection_percent: 101").unwrap_err().path,
            "max_ejection_percent"
        );
        assert_eq!(
            detection("base_ejection_time: 60s\nmax_ejection_time: 10s")
                .unwrap_err()
                .path,
            "max_ejection_time"
        );
        assert_eq!(detection("interval: 0s").unwrap_err().path, "interval");
    }
}
