//! File-based xDS (`path_config_source` for `lds_config` and `cds_config`): listeners and
//! clusters read from files that each hold a `DiscoveryResponse`, the Kubernetes ConfigMap
//! pattern.
//!
//! A file is re-read when the file its path resolves to changes — another inode (a rename
//! onto the path, or a ConfigMap's `..data` symlink swap), another size or modification
//! time. A `stat` every [`POLL_INTERVAL`] sees that; it follows symlinks, which inotify on
//! the path's directory would not, and costs one syscall per file. Each read goes through
//! the same conversion as an xDS response (resources refused one by one with their field
//! paths, a refused resource keeping its last accepted version) and becomes one snapshot,
//! so a request sees the old set or the new one, never a mixture. A file that cannot be
//! read or parsed keeps the last good resources.
//!
//! Files and ADS are not mixed, so a resource that needs EDS, RDS or SDS from ADS is
//! refused rather than left warming forever; one naming its own `api_config_source` gets
//! its stream (see [`crate::xds`]).
//!
//! RDS and EDS config sources may name files too (`path_config_source` under `rds` or
//! `eds_config`), whoever delivered the listener or cluster: [`run_resource_files`] watches
//! every file the current config names, the same way, and a listener or cluster uses only
//! what the file it names holds. A file without the named resource gives an empty route
//! table or no endpoints at once (nothing more can arrive until the file changes), as an
//! expired `initial_fetch_timeout` would.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use xds_types::bootstrap::FileSources;
use xds_types::config_source::Origin;
use xds_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use xds_types::tls::SecretSource;
use xds_types::{type_urls, ValidationError};

use xds_types::cluster::Assignment;
use xds_types::RouteTable;

use crate::config::{DynamicResources, Received, SnapshotStore};
use crate::listener::ListenerManager;
use crate::xds::{convert_all, nack, Rejection};

/// How often each file is checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok(Stamp {
        device: metadata.dev(),
        inode: metadata.ino(),
        size: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// One watched file and the resource type it holds.
struct Watched {
    type_url: &'static str,
    path: PathBuf,
    last: Option<Stamp>,
}

/// Checks at start that every file exists, as Envoy requires ("the path to the source
/// must exist at config load time").
pub fn check_files(sources: &FileSources) -> Result<(), ValidationError> {
    for (field, path) in [
        ("lds_config", &sources.listeners),
        ("cds_config", &sources.clusters),
    ] {
        if let Some(path) = path {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ValidationError::new(
                    format!("dynamic_resources.{field}.path_config_source.path"),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Loads the files, turns `ready` on, then applies every change until the process exits.
pub async fn run(
    sources: FileSources,
    store: SnapshotStore,
    listeners: Arc<ListenerManager>,
    ready: Arc<AtomicBool>,
) {
    // Clusters first, so the listeners that route to them find them (make before break).
    let mut watched: Vec<Watched> = [
        (type_urls::CLUSTER, sources.clusters),
        (type_urls::LISTENER, sources.listeners),
    ]
    .into_iter()
    .filter_map(|(type_url, path)| {
        Some(Watched {
            type_url,
            path: path?,
            last: None,
        })
    })
    .collect();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for file in &mut watched {
            let now = match stamp(&file.path) {
                Ok(s) => s,
                Err(error) => {
                    if file.last.take().is_some() {
                        warn!(path = %file.path.display(), %error, "config file unreadable; keeping the last good resources");
                    }
                    continue;
                }
            };
            if file.last.as_ref() == Some(&now) {
                continue;
            }
            file.last = Some(now);
            load(file, &store, &listeners);
        }
        if !ready.swap(true, Ordering::Relaxed) {
            info!("config files loaded");
        }
    }
}

/// Reads one file and publishes what it holds.
fn load(file: &Watched, store: &SnapshotStore, listeners: &ListenerManager) {
    let path = file.path.display();
    let text = match std::fs::read_to_string(&file.path) {
        Ok(t) => t,
        Err(error) => {
            warn!(%path, %error, "cannot read config file; keeping the last good resources");
            return;
        }
    };
    let updated =
        store.update_dynamic(
            |current| match convert_file(file.type_url, &text, current) {
                Ok((rejected, next)) => Some((next, rejected)),
                Err(error) => {
                    warn!(%path, %error, "config file refused; keeping the last good resources");
                    None
                }
            },
        );
    let Some((rejected, snapshot)) = updated else {
        return;
    };
    if !rejected.is_empty() {
        warn!(%path, errors = %nack(&rejected).message, "resources refused; each keeps its last good version");
    }
    if let Err(error) = listeners.reconcile_latest() {
        warn!(%error, "listener from a config file failed to start");
    }
    info!(%path, version = snapshot.version, "config file applied");
}

/// Watches the RDS and EDS files the current listeners and clusters name, until the
/// process exits.
pub async fn run_resource_files(store: SnapshotStore, listeners: Arc<ListenerManager>) {
    let mut stamps: HashMap<PathBuf, Option<Stamp>> = HashMap::new();
    let mut seen_version = 0;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let version = store.load().version;
        if stamps.is_empty() && version == seen_version {
            continue;
        }
        seen_version = version;
        // Per file: the resources named from it, and whether each is there.
        let mut wanted: BTreeMap<PathBuf, Vec<(&'static str, String, bool)>> = BTreeMap::new();
        for (dependency, arrived) in store.dependencies() {
            if let Origin::File(file) = dependency.origin {
                wanted.entry(file).or_default().push((
                    dependency.type_url,
                    dependency.name,
                    arrived,
                ));
            }
        }
        let gone: Vec<PathBuf> = stamps
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            stamps.remove(&path);
            store.publish_file(&path, BTreeMap::new(), BTreeMap::new());
        }
        for (path, names) in &wanted {
            let now = stamp(path);
            let last = stamps.entry(path.clone()).or_default();
            let missing = names.iter().any(|(_, _, arrived)| !arrived);
            match now {
                Err(error) => {
                    if last.take().is_some() || missing {
                        warn!(path = %path.display(), %error, "config file unreadable; keeping the last good resources");
                    }
                }
                Ok(now) if last.as_ref() != Some(&now) || missing => {
                    *last = Some(now);
                    load_resources(path, names, &store, &listeners);
                }
                Ok(_) => {}
            }
        }
    }
}

/// Reads one RDS or EDS file and publishes what it holds, plus an empty resource for each
/// name the config wants from it that it lacks.
fn load_resources(
    path: &Path,
    names: &[(&'static str, String, bool)],
    store: &SnapshotStore,
    listeners: &ListenerManager,
) {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(error) => {
            warn!(path = %shown, %error, "cannot read config file; keeping the last good resources");
            return;
        }
    };
    let response = match parse_response(&text) {
        Ok(r) => r,
        Err(error) => {
            warn!(path = %shown, %error, "config file refused; keeping the last good resources");
            return;
        }
    };
    let type_url = match response.type_url.as_str() {
        "" => response
            .resources
            .first()
            .map_or(names[0].0, |r| r.type_url.as_str()),
        t => t,
    };
    if type_url != type_urls::ROUTE_CONFIGURATION && type_url != type_urls::CLUSTER_LOAD_ASSIGNMENT
    {
        warn!(path = %shown, %type_url, "config file refused: an RDS or EDS file holds RouteConfiguration or ClusterLoadAssignment resources");
        return;
    }
    // A refused resource keeps the version this file gave before.
    let held = store.files();
    let mut before = DynamicResources::default();
    for ((file, name), table) in held.routes {
        if file == path {
            before.routes.insert(name, table);
        }
    }
    for ((file, name), assignment) in held.assignments {
        if file == path {
            before.assignments.insert(name, assignment);
        }
    }
    let (rejected, mut next) = convert_all(
        type_url,
        &response.version_info,
        response.resources.iter().map(|a| (None, a)),
        &before,
        true,
    );
    if !rejected.is_empty() {
        warn!(path = %shown, errors = %nack(&rejected).message, "resources refused; each keeps its last good version");
    }
    for (wanted_type, name, _) in names {
        let lacks = match *wanted_type {
            type_urls::ROUTE_CONFIGURATION => !next.routes.contains_key(name),
            _ => !next.assignments.contains_key(name),
        };
        if !lacks {
            continue;
        }
        warn!(path = %shown, %name, "config file holds no such resource; going live without it");
        match *wanted_type {
            type_urls::ROUTE_CONFIGURATION => {
                let table = RouteTable {
                    name: name.clone(),
                    ..RouteTable::default()
                };
                next.routes.insert(name.clone(), table);
            }
            _ => {
                next.assignments
                    .insert(name.clone(), Assignment::empty(name));
            }
        }
    }
    let snapshot = store.publish_file(path, next.routes, next.assignments);
    // The latest snapshot: the ADS client may have published after this one.
    if let Err(error) = listeners.reconcile(&store.load()) {
        warn!(%error, "listener using a config file failed to start");
    }
    info!(path = %shown, version = snapshot.version, "config file applied");
}

/// Converts a file's `DiscoveryResponse` of `type_url` over `current`: the rejected
/// resources and the resulting set, or why the whole file is refused.
fn convert_file(
    type_url: &str,
    text: &str,
    current: &DynamicResources,
) -> Result<(Vec<Rejection>, DynamicResources), ValidationError> {
    let response = parse_response(text)?;
    if !response.type_url.is_empty() && response.type_url != type_url {
        return Err(ValidationError::new(
            "type_url",
            format!("{:?} in a file of {type_url}", response.type_url),
        ));
    }
    let (mut rejected, mut next) = convert_all(
        type_url,
        &response.version_info,
        response.resources.iter().map(|a| (None, a)),
        current,
        true,
    );
    refuse_xds_dependencies(&mut next, current, &mut rejected);
    Ok((rejected, next))
}

/// A file's `DiscoveryResponse`. Only its shape is checked here: each resource goes
/// through the field policy on its own in the conversion, so one bad resource is refused
/// alone.
fn parse_response(text: &str) -> Result<DiscoveryResponse, ValidationError> {
    const RESPONSE: &str = "envoy.service.discovery.v3.DiscoveryResponse";
    let dynamic = xds_types::decode::dynamic_from_yaml(text, RESPONSE)?;
    if let Some((field, _)) = dynamic
        .fields()
        .find(|(f, _)| !["version_info", "resources", "type_url"].contains(&f.name()))
    {
        return Err(ValidationError::new(
            field.name(),
            "not supported in a config file (version_info, resources and type_url are)",
        ));
    }
    dynamic
        .transcode_to::<DiscoveryResponse>()
        .map_err(|e| ValidationError::new("", format!("cannot convert {RESPONSE}: {e}")))
}

/// Without `ads_config` (files, or only per-type streams) an EDS, RDS or SDS source of
/// `ads: {}` would never deliver: a resource that names one is refused (its previous
/// version, which could not have named one either, stays).
pub(crate) fn refuse_xds_dependencies(
    next: &mut DynamicResources,
    current: &DynamicResources,
    rejected: &mut Vec<Rejection>,
) {
    let received = (&mut next.received, &current.received);
    refuse(
        &mut next.clusters,
        &current.clusters,
        received,
        rejected,
        |c| {
            if c.eds.as_ref().is_some_and(|e| e.origin == Origin::Ads) {
                Some("eds_cluster_config: EDS")
            } else if c.tls.iter().flat_map(|t| t.sds_names()).any(over_ads) {
                Some("transport_socket: SDS")
            } else {
                None
            }
        },
    );
    let received = (&mut next.received, &current.received);
    refuse(
        &mut next.listeners,
        &current.listeners,
        received,
        rejected,
        |l| {
            if l.route_origins().any(|o| *o == Origin::Ads) {
                Some("filter_chains: RDS")
            } else if l.sds_refs().any(over_ads) {
                Some("filter_chains: SDS")
            } else {
                None
            }
        },
    );
}

/// As received, for `/config_dump`: `(next, current)`.
type ReceivedPair<'a> = (
    &'a mut BTreeMap<(String, String), Received>,
    &'a BTreeMap<(String, String), Received>,
);

/// Refuses every resource of `next` for which `needs` names what it would wait for,
/// putting back its version from `current` (or removing it when it had none), in the
/// model and in what `/config_dump` reports as received.
fn refuse<T: Clone + TypeUrl>(
    next: &mut BTreeMap<String, T>,
    current: &BTreeMap<String, T>,
    (received, received_before): ReceivedPair<'_>,
    rejected: &mut Vec<Rejection>,
    needs: impl Fn(&T) -> Option<&'static str>,
) {
    let refused: Vec<(String, &str)> = next
        .iter()
        .filter_map(|(name, r)| Some((name.clone(), needs(r)?)))
        .collect();
    for (name, what) in refused {
        match current.get(&name) {
            Some(old) => next.insert(name.clone(), old.clone()),
            None => next.remove(&name),
        };
        let key = (T::TYPE_URL.to_string(), name.clone());
        match received_before.get(&key) {
            Some(old) => received.insert(key, old.clone()),
            None => received.remove(&key),
        };
        rejected.push(Rejection {
            name,
            error: format!("{what} needs dynamic_resources.ads_config"),
        });
    }
}

/// The xDS type of a model, to find its entry in `received`.
trait TypeUrl {
    const TYPE_URL: &'static str;
}

impl TypeUrl for xds_types::Cluster {
    const TYPE_URL: &'static str = type_urls::CLUSTER;
}

impl TypeUrl for xds_types::Listener {
    const TYPE_URL: &'static str = type_urls::LISTENER;
}

fn over_ads(sds: &xds_types::tls::SdsRef) -> bool {
    matches!(
        sds.source,
        SecretSource::Xds {
            origin: Origin::Ads,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    fn cluster_file(version: &str, body: &str) -> String {
        format!("version_info: '{version}'\nresources:\n- '@type': {CLUSTER}\n{body}")
    }

    #[test]
    fn a_file_replaces_the_set_and_a_bad_resource_keeps_its_last_version() {
        let first = cluster_file(
            "1",
            "  name: a\n  connect_timeout: 1s\n  load_assignment: {cluster_name: a}\n- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: b\n  load_assignment: {cluster_name: b}",
        );
        let (rejected, one) =
            convert_file(type_urls::CLUSTER, &first, &DynamicResources::default()).unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(one.clusters.keys().collect::<Vec<_>>(), ["a", "b"]);
        // b turns invalid and a goes: b keeps version 1, a is removed.
        let second = cluster_file("2", "  name: b\n  type: STATIC\n  lb_policy: MAGLEV\n  load_assignment: {cluster_name: b, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 1}}}}]}]}");
        let (rejected, two) = convert_file(type_urls::CLUSTER, &second, &one).unwrap();
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, "b");
        assert!(rejected[0].error.contains("address"), "{rejected:?}");
        assert_eq!(two.clusters.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn eds_without_ads_is_refused_and_a_wrong_type_refuses_the_file() {
        let eds = cluster_file(
            "1",
            "  name: e\n  type: EDS\n  eds_cluster_config: {eds_config: {ads: {}}}",
        );
        let (rejected, next) =
            convert_file(type_urls::CLUSTER, &eds, &DynamicResources::default()).unwrap();
        assert!(next.clusters.is_empty());
        assert!(
            next.received.is_empty(),
            "a refused resource is not reported"
        );
        assert_eq!(
            rejected[0].error,
            "eds_cluster_config: EDS needs dynamic_resources.ads_config"
        );
        let err = convert_file(
            type_urls::LISTENER,
            &format!("type_url: {CLUSTER}\nresources: []"),
            &DynamicResources::default(),
        )
        .unwrap_err();
        assert_eq!(err.path, "type_url");
        let err = convert_file(
            type_urls::CLUSTER,
            "nonce: '1'\nresources: []",
            &DynamicResources::default(),
        )
        .unwrap_err();
        assert_eq!(err.path, "nonce");
    }

    #[test]
    fn an_unsupported_field_refuses_only_its_resource() {
        let file = cluster_file(
            "1",
            "  name: a\n  lrs_server: {self: {}}\n- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: b",
        );
        let (rejected, next) =
            convert_file(type_urls::CLUSTER, &file, &DynamicResources::default()).unwrap();
        assert_eq!(next.clusters.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].error.contains("lrs_server"), "{rejected:?}");
    }
}
