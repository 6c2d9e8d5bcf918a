//! A bounded client load that checks config atomicity: every answer must come from the
//! upstream its config version names. The suites that swap config under load (xDS, files,
//! SIGHUP) share it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::HttpClient;

/// How a [`StampedLoad`] runs: each worker stops when told, after `limit`, or after
/// `requests`; `reconnect_every` > 0 opens a new connection that often, so the kernel
/// spreads the load over every process on a shared port.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub workers: usize,
    pub requests: u32,
    pub limit: Duration,
    pub reconnect_every: u32,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answers other than 200, and requests that got no answer.
    pub failures: u64,
    /// 200s whose stamp header named another upstream than the one that answered.
    pub mismatched: u64,
    /// Answers per upstream name.
    pub served: HashMap<String, u64>,
}

/// `GET /` loops against a listener whose config stamps `stamp` with the name of the
/// upstream it routes to (which the test upstream reports as `server`).
pub struct StampedLoad {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    mismatched: Arc<AtomicU64>,
    workers: Vec<JoinHandle<HashMap<String, u64>>>,
}

impl StampedLoad {
    /// Starts the workers.
    pub fn start(listener: SocketAddr, stamp: &'static str, shape: LoadShape) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let mismatched = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + shape.limit;
        let workers = (0..shape.workers)
            .map(|_| {
                let (stop, failures, mismatched) =
                    (stop.clone(), failures.clone(), mismatched.clone());
                tokio::spawn(async move {
                    let mut client = HttpClient::http1();
                    let mut served = HashMap::<String, u64>::new();
                    for i in 0..shape.requests {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        if shape.reconnect_every > 0 && i % shape.reconnect_every == 0 {
                            client = HttpClient::http1();
                        }
                        match client.get(listener, "h", "/", &[]).await {
                            Ok(r) if r.status == 200 => {
                                let server = r.json()["server"].as_str().unwrap_or("").to_string();
                                if r.header(stamp).as_deref() != Some(server.as_str()) {
                                    mismatched.fetch_add(1, Ordering::Relaxed);
                                }
                                *served.entry(server).or_default() += 1;
                            }
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    served
                })
            })
            .collect();
        Self {
            stop,
            failures,
            mismatched,
            workers,
        }
    }

    /// Stops the workers and sums what they saw.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for worker in self.workers {
            for (name, count) in worker.await.expect("load worker") {
                *tally.served.entry(name).or_default() += count;
            }
        }
        tally.failures = self.failures.load(Ordering::Relaxed);
        tally.mismatched = self.mismatched.load(Ordering::Relaxed);
        tally
    }
}
