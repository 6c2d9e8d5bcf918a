//! `sluice -c bootstrap.yaml`: the data plane binary, flag-compatible with `envoy` where
//! the flags overlap.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Envoy-compatible HTTP proxy")]
struct Cli {
    /// Bootstrap file (YAML or JSON, Envoy's bootstrap format).
    #[arg(short = 'c', long = "config-path")]
    config_path: PathBuf,
    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Log filter, e.g. `info` or `info,sluice::upstream=debug`.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// `json`: one JSON object per log line, for log pipelines; anything else (an Envoy
    /// format string) is read as the default text format.
    #[arg(long = "log-format", default_value = "text")]
    log_format: String,
    /// Seconds to wait for open connections when draining on shutdown.
    #[arg(long = "drain-time-s", default_value_t = 5)]
    drain_time_s: u64,
    /// Access log lines each sink (file, stdout, stderr) queues before it drops new ones
    /// and counts them in `access_log.dropped`: a slow disk never stalls traffic.
    #[arg(long = "access-log-queue-lines", default_value_t = 8192)]
    access_log_queue_lines: usize,
    /// How long a span waits for a batch of 5 before it is exported anyway (Envoy's
    /// `tracing.opentelemetry.flush_interval_ms`).
    #[arg(long = "trace-flush-interval-ms", default_value_t = 5000)]
    trace_flush_interval_ms: u64,
    /// Validate the bootstrap and exit (Envoy's `--mode validate`).
    #[arg(long = "mode", default_value = "serve", value_parser = ["serve", "validate"])]
    mode: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let text = match std::fs::read_to_string(&cli.config_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", cli.config_path.display());
            return ExitCode::from(1);
        }
    };
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" || xds_types::Bootstrap::wants_json_logs(&text) {
        logs.json().init();
    } else {
        logs.init();
    }

    sluice::access_log::set_queue_lines(cli.access_log_queue_lines);
    sluice::trace::export::set_flush_interval(std::time::Duration::from_millis(
        cli.trace_flush_interval_ms,
    ));

    if cli.mode == "validate" {
        return validate(&cli.config_path, &text);
    }
    let bootstrap = match xds_types::Bootstrap::from_yaml(&text).and_then(|b| {
        check_files(&b)?;
        Ok(b)
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: invalid bootstrap {}: {e}",
                cli.config_path.display()
            );
            return ExitCode::from(1);
        }
    };
    let concurrency = cli
        .concurrency
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut builder = if concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(concurrency);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let options = sluice::server::Options {
        config_path: cli.config_path,
        drain_time: Duration::from_secs(cli.drain_time_s),
        concurrency,
    };
    match runtime.block_on(sluice::server::run(bootstrap, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--mode validate`: prints every problem of the bootstrap, one per line with its field
/// path, so an operator sees the whole gap at once; exit status 1 when there is any.
fn validate(path: &std::path::Path, text: &str) -> ExitCode {
    let mut problems = xds_types::Bootstrap::inspect(text).unsupported;
    if problems.is_empty() {
        problems.extend(
            xds_types::Bootstrap::from_yaml(text)
                .and_then(|b| check_files(&b))
                .err(),
        );
    }
    if problems.is_empty() {
        eprintln!("configuration '{}' OK", path.display());
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "error: invalid bootstrap {}: {} problem(s)",
        path.display(),
        problems.len()
    );
    for problem in &problems {
        eprintln!("  {problem}");
    }
    ExitCode::from(1)
}

/// The files a bootstrap names (certificates, keys, config sources) exist and load.
fn check_files(bootstrap: &xds_types::Bootstrap) -> Result<(), xds_types::ValidationError> {
    sluice::tls::check_bootstrap_files(bootstrap)?;
    match &bootstrap.files {
        Some(files) => sluice::file_xds::check_files(files),
        None => Ok(()),
    }
}
