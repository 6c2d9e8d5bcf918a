//! The compatibility corpus (`tests/compat/*.yaml`): bootstraps written here in the
//! shapes that Envoy's docs and public control planes use, and the report
//! (`docs/compatibility.md`) of what `sluice` makes of each. The report is rendered from
//! the field policy itself ([`xds_types::Bootstrap::inspect`] and the conversion), so it
//! cannot drift from the code; the e2e suite checks it is current, that real Envoy accepts
//! every config, and that every refusal is one the config's header explains.
//!
//! Each config starts with a header of comment lines:
//!
//! ```text
//! # compat: <area title>
//! # shape: <what it was written after, in words; continued on "#   " lines>
//! # refused: <a substring of the problem> => <why sluice refuses it>
//! ```
//!
//! `@CERTS@` stands for the directory of the PEM files [`CompatCerts`] writes.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::pki::{Authority, LeafSpec};

/// One config of the corpus.
#[derive(Debug, Clone)]
pub struct CompatConfig {
    /// File name, e.g. `front-proxy.yaml`.
    pub file: String,
    pub area: String,
    pub shape: String,
    /// `(substring of the problem, reason)`.
    pub refusals: Vec<(String, String)>,
    /// The config as written, with `@CERTS@` unexpanded.
    pub text: String,
}

impl CompatConfig {
    /// The config with `@CERTS@` pointing at `certs`.
    pub fn render(&self, certs: &Path) -> String {
        self.text.replace("@CERTS@", &certs.display().to_string())
    }

    /// The documented reason for `problem`, if its header explains it.
    pub fn reason_for(&self, problem: &str) -> Option<&str> {
        self.refusals
            .iter()
            .find(|(key, _)| problem.contains(key.as_str()))
            .map(|(_, reason)| reason.as_str())
    }
}

/// Where the corpus lives.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat")
}

/// Every config of the corpus, by file name.
pub fn corpus() -> anyhow::Result<Vec<CompatConfig>> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)?;
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            parse_header(&file, text).with_context(|| format!("header of {}", path.display()))
        })
        .collect()
}

fn parse_header(file: &str, text: String) -> anyhow::Result<CompatConfig> {
    let mut area = None;
    let mut shape = String::new();
    let mut refusals = Vec::new();
    let mut in_shape = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("# compat: ") {
            area = Some(rest.trim().to_string());
            in_shape = false;
        } else if let Some(rest) = line.strip_prefix("# shape: ") {
            shape = rest.trim().to_string();
            in_shape = true;
        } else if let Some(rest) = line.strip_prefix("# refused: ") {
            let (key, reason) = rest
                .split_once(" => ")
                .context("a refusal reads `# refused: <problem substring> => <reason>`")?;
            refusals.push((key.trim().to_string(), reason.trim().to_string()));
            in_shape = false;
        } else if let Some(rest) = line.strip_prefix("#   ") {
            let last = match (in_shape, refusals.last_mut()) {
                (true, _) => &mut shape,
                (false, Some((_, reason))) => reason,
                (false, None) => anyhow::bail!("continuation line without a field: {line}"),
            };
            last.push(' ');
            last.push_str(rest.trim());
        }
    }
    Ok(CompatConfig {
        file: file.to_string(),
        area: area.context("no `# compat: <area>` line")?,
        shape,
        refusals,
        text,
    })
}

/// The PEM files the corpus names: a CA, server certificates for `a.example.test` and
/// `b.example.test`, and a client certificate, in a temporary directory.
pub struct CompatCerts {
    dir: tempfile::TempDir,
    pub ca: Authority,
}

impl CompatCerts {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = Authority::new("sluice compat CA")?;
        std::fs::write(dir.path().join("ca.pem"), &ca.pem)?;
        for (name, client) in [("a", false), ("b", false), ("client", true)] {
            let issued = ca.issue(&LeafSpec {
                common_name: format!("{name}.example.test"),
                dns: vec![format!("{name}.example.test")],
                client,
                ..LeafSpec::default()
            })?;
            std::fs::write(dir.path().join(format!("{name}.pem")), issued.cert)?;
            std::fs::write(dir.path().join(format!("{name}.key")), issued.key)?;
        }
        Ok(Self { dir, ca })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What sluice makes of one config, found in-process by the same code `--mode validate`
/// runs (less the reading of certificate files).
#[derive(Debug)]
pub struct Verdict {
    /// Each problem, `path: message`; empty when the config loads.
    pub problems: Vec<String>,
    /// `(message.field, note, how many places set it)`, in the order first met.
    pub inert: Vec<(String, &'static str, usize)>,
}

impl Verdict {
    pub fn of(text: &str) -> Self {
        let inspection = xds_types::Bootstrap::inspect(text);
        let mut problems: Vec<String> = inspection
            .unsupported
            .iter()
            .map(ToString::to_string)
            .collect();
        if problems.is_empty() {
            problems.extend(
                xds_types::Bootstrap::from_yaml(text)
                    .err()
                    .map(|e| e.to_string()),
            );
        }
        let mut inert: Vec<(String, &'static str, usize)> = Vec::new();
        for field in inspection.inert {
            match inert.iter_mut().find(|(f, _, _)| *f == field.field) {
                Some((_, _, count)) => *count += 1,
                None => inert.push((field.field, field.note, 1)),
            }
        }
        Self { problems, inert }
    }
}

/// The Markdown of `docs/compatibility.md`.
pub fn report(corpus: &[CompatConfig]) -> String {
    let verdicts: Vec<Verdict> = corpus
        .iter()
        .map(|c| Verdict::of(&c.render(Path::new("/etc/certs"))))
        .collect();
    let loads = verdicts.iter().filter(|v| v.problems.is_empty()).count();
    let mut out = format!(
        "# Compatibility with real Envoy configs\n\n\
         Generated by `cargo run -p sluice-tests --bin compat-report` from the configs in\n\
         `tests/compat/`; the e2e test `compat::report_is_current` fails when this file is\n\
         stale. The configs were written here in the shapes that Envoy's docs, Istio, Envoy\n\
         Gateway and go-control-plane use (none is copied), one per feature area. Real Envoy\n\
         accepts every one (`envoy --mode validate`, checked by\n\
         `compat::envoy_accepts_every_config_and_every_refusal_is_explained`), and every\n\
         refusal below carries the reason written in the config's header: a refusal without one\n\
         fails that test. `compat::differential_*` runs some of them end to end through both\n\
         proxies and compares the answers.\n\n\
         **{loads} of {} configs load in sluice.**\n\n\
         | config | area | sluice | refused | accepted without effect |\n\
         | --- | --- | --- | --- | --- |\n",
        corpus.len()
    );
    for (config, verdict) in corpus.iter().zip(&verdicts) {
        let status = if verdict.problems.is_empty() {
            "loads"
        } else {
            "refused"
        };
        out.push_str(&format!(
            "| [`{}`](#{}) | {} | {status} | {} | {} |\n",
            config.file,
            anchor(&config.file),
            config.area,
            verdict.problems.len(),
            verdict.inert.len()
        ));
    }
    for (config, verdict) in corpus.iter().zip(&verdicts) {
        out.push_str(&format!(
            "\n## {}\n\n**{}**. Written after {}\n",
            config.file, config.area, config.shape
        ));
        if verdict.problems.is_empty() {
            out.push_str("\nLoads in sluice.\n");
        } else {
            out.push_str("\nRefused by sluice:\n\n");
            for problem in &verdict.problems {
                let reason = config
                    .reason_for(problem)
                    .unwrap_or("**no documented reason** (the compat test fails)");
                out.push_str(&format!("- `{problem}` — {reason}\n"));
            }
        }
        if !verdict.inert.is_empty() {
            out.push_str("\nAccepted without effect:\n\n");
            for (field, note, count) in &verdict.inert {
                let places = if *count == 1 {
                    String::new()
                } else {
                    format!(" ({count} places)")
                };
                out.push_str(&format!("- `{field}`{places}: {note}\n"));
            }
        }
    }
    out
}

/// GitHub's heading anchor for a file name heading.
fn anchor(file: &str) -> String {
    file.chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .collect::<String>()
        .to_lowercase()
}

/// Path of the generated report.
pub fn report_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility.md")
}

/// A config made runnable on this machine: every `port_value` replaced, those of the
/// upstreams by the port of the test server standing in for it (`upstreams`: written port →
/// real port), every other (listeners, admin) by a free port; returned as JSON (which
/// both Envoy and sluice read) with the map of the replaced ports.
pub fn localized(
    text: &str,
    upstreams: &[(u16, u16)],
) -> anyhow::Result<(String, std::collections::HashMap<u16, u16>)> {
    let mut value: serde_json::Value = serde_yaml_ng::from_str(text)?;
    let mut ports: std::collections::HashMap<u16, u16> = upstreams.iter().copied().collect();
    replace_ports(&mut value, &mut ports);
    Ok((value.to_string(), ports))
}

fn replace_ports(value: &mut serde_json::Value, ports: &mut std::collections::HashMap<u16, u16>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, child) in fields.iter_mut() {
                match child.as_u64().and_then(|p| u16::try_from(p).ok()) {
                    Some(written) if key == "port_value" => {
                        let real = *ports.entry(written).or_insert_with(crate::free_port);
                        *child = real.into();
                    }
                    _ => replace_ports(child, ports),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| replace_ports(v, ports)),
        _ => {}
    }
}
