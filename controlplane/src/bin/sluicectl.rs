//! `sluicectl`: the operators' CLI over `sluice-cp`'s operator API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_cp::api::pb;
use sluice_cp::api::pb::admin_client::AdminClient;
use sluice_cp::resources::resource_type;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Operate a Sluice fleet through sluice-cp"
)]
struct Cli {
    /// The control plane's operator API (`https://…` with TLS).
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:18001")]
    server: String,
    /// API token (read or write).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the API token, e.g. the `admin-token` sluice-cp writes into its store.
    #[arg(long, env = "SLUICE_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the server's certificate (for `https://`).
    #[arg(long, env = "SLUICE_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, when the server requires mutual TLS.
    #[arg(long, env = "SLUICE_CERT", requires = "key", global = true)]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, env = "SLUICE_KEY", requires = "cert", global = true)]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the resources in FILE (YAML/JSON documents with "@type"), all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long, default_value = "")]
        group: String,
        /// Apply only if the group is still at revision N (as `history` or an earlier
        /// apply showed it; 0 for a group with none); otherwise fail and write nothing.
        #[arg(long, value_name = "N")]
        expect_revision: Option<u64>,
    },
    /// Check FILE as apply would, without applying it.
    Validate {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Show what applying FILE would change, field by field.
    Diff {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Show resources (TYPE: listener, route, cluster, endpoints or secret; private keys
    /// are redacted).
    Get {
        r#type: Option<String>,
        name: Option<String>,
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Delete one resource.
    Delete {
        r#type: String,
        name: String,
        #[arg(long, default_value = "")]
        group: String,
        /// Delete only if the group is still at revision N; otherwise fail and write nothing.
        #[arg(long, value_name = "N")]
        expect_revision: Option<u64>,
    },
    /// List the group's revisions: when, by which credential, what each changed.
    History {
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Make revision REV current again.
    Rollback {
        revision: u64,
        #[arg(long, default_value = "")]
        group: String,
        /// Roll back only if the group is still at revision N; otherwise fail.
        #[arg(long, value_name = "N")]
        expect_revision: Option<u64>,
    },
    /// Every node, the version it ACKed per type, and its last NACK.
    Nodes {
        /// Keep printing the view after every change, until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            print(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Adds the API token to every request.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Api = AdminClient<InterceptedService<Channel, Bearer>>;

async fn client(cli: &Cli) -> Result<Api, String> {
    let server = &cli.server;
    let token = match (&cli.token, &cli.token_file) {
        (Some(token), _) => Some(token.trim().to_string()),
        (None, Some(path)) => Some(read(path)?.trim().to_string()),
        (None, None) => None,
    };
    let bearer = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .map_err(|_| "the token has characters a header cannot carry".to_string())?;
    let mut endpoint =
        Endpoint::from_shared(server.clone()).map_err(|e| format!("--server {server}: {e}"))?;
    if let Some(ca) = &cli.ca_cert {
        let identity = cli.cert.as_deref().zip(cli.key.as_deref());
        let tls = sluice_cp::tls::client_config(ca, identity).map_err(|e| e.to_string())?;
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("--server {server}: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

fn read(file: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
}

fn change(r: pb::ApplyResponse, output: Output) -> String {
    match output {
        Output::Json => format!(
            "{}\n",
            serde_json::json!({ "revision": r.revision, "changed": r.changed })
        ),
        Output::Yaml => format!("revision: {}\nchanged: {}\n", r.revision, r.changed),
        Output::Table if r.changed => format!("revision {} applied\n", r.revision),
        Output::Table => format!("unchanged (revision {})\n", r.revision),
    }
}

async fn run(cli: Cli) -> Result<String, String> {
    let mut api = client(&cli).await?;
    let status = |e: tonic::Status| e.message().to_string();
    Ok(match cli.command {
        Command::Apply {
            file,
            group,
            expect_revision,
        } => {
            let documents = read(&file)?;
            let r = api
                .apply(pb::ApplyRequest {
                    group,
                    documents,
                    expect_revision,
                })
                .await
                .map_err(|e| format!("{}: {}", file.display(), e.message()))?;
            change(r.into_inner(), cli.output)
        }
        Command::Validate { file, group } => {
            let documents = read(&file)?;
            let r = api
                .validate(pb::ApplyRequest {
                    group,
                    documents,
                    expect_revision: None,
                })
                .await
                .map_err(|e| format!("{}: {}", file.display(), e.message()))?;
            let r = r.into_inner();
            format!(
                "{}: valid ({})\n",
                file.display(),
                if r.changed {
                    "would change the group"
                } else {
                    "no change"
                }
            )
        }
        Command::Diff { file, group } => {
            let documents = read(&file)?;
            let r = api
                .diff(pb::ApplyRequest {
                    group,
                    documents,
                    expect_revision: None,
                })
                .await
                .map_err(|e| format!("{}: {}", file.display(), e.message()))?
                .into_inner();
            diff_text(&r, cli.output)
        }
        Command::Get {
            r#type,
            name,
            group,
        } => {
            let r = api
                .get(pb::GetRequest {
                    group,
                    r#type: r#type.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            documents(&r.documents, cli.output)?
        }
        Command::Delete {
            r#type,
            name,
            group,
            expect_revision,
        } => change(
            api.delete(pb::DeleteRequest {
                group,
                r#type,
                name,
                expect_revision,
            })
            .await
            .map_err(status)?
            .into_inner(),
            cli.output,
        ),
        Command::History { group } => {
            let revisions = api
                .history(pb::HistoryRequest { group })
                .await
                .map_err(status)?
                .into_inner()
                .revisions;
            let rows: Vec<serde_json::Value> = revisions.iter().map(revision_json).collect();
            structured(
                &rows,
                cli.output,
                &[
                    "REVISION",
                    "CREATED",
                    "AUTHOR",
                    "SOURCE",
                    "RESOURCES",
                    "CHANGES",
                ],
                |v| {
                    let text = |key: &str| v[key].as_str().unwrap_or("").to_string();
                    let marked = |key: &str, mark: &str| {
                        v[key]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|n| n.as_str())
                            .map(|n| format!("{mark}{n}"))
                            .collect::<Vec<_>>()
                    };
                    let mut changes = marked("added", "+");
                    changes.extend(marked("changed", "~"));
                    changes.extend(marked("removed", "-"));
                    vec![
                        v["revision"].to_string(),
                        text("created"),
                        text("author"),
                        text("source"),
                        v["resources"].to_string(),
                        changes.join(" "),
                    ]
                },
            )
        }
        Command::Rollback {
            revision,
            group,
            expect_revision,
        } => change(
            api.rollback(pb::RollbackRequest {
                group,
                revision,
                expect_revision,
            })
            .await
            .map_err(status)?
            .into_inner(),
            cli.output,
        ),
        Command::Nodes { watch: false } => {
            let nodes = api
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .nodes;
            nodes_view(&nodes, cli.output)
        }
        Command::Nodes { watch: true } => {
            let mut changes = api
                .watch_nodes(pb::ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            while let Some(view) = changes.message().await.map_err(status)? {
                print(&nodes_view(&view.nodes, cli.output));
                print("\n");
            }
            String::new()
        }
    })
}

/// One revision as JSON: its time as RFC 3339 (UTC) beside the raw milliseconds.
fn revision_json(r: &pb::Revision) -> serde_json::Value {
    let created =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.created_unix_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
    serde_json::json!({
        "revision": r.number, "created": created, "created_unix_ms": r.created_unix_ms,
        "author": r.author, "source": r.source, "resources": r.resources,
        "added": r.added, "changed": r.changed, "removed": r.removed,
    })
}

/// The fleet as a table (ACKed version per type) or as JSON/YAML.
fn nodes_view(nodes: &[pb::NodeStatus], output: Output) -> String {
    let rows: Vec<serde_json::Value> = nodes.iter().map(node_json).collect();
    structured(
        &rows,
        output,
        &[
            "NODE",
            "GROUP",
            "STATE",
            "PROTOCOL",
            "LISTENERS",
            "ROUTES",
            "CLUSTERS",
            "ENDPOINTS",
            "SECRETS",
            "WARMING ON",
            "LAST NACK",
        ],
        |v| {
            let acked = |t: &str| {
                v["types"][t]["acked_version"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string()
            };
            vec![
                v["id"].as_str().unwrap_or("").to_string(),
                v["group"].as_str().unwrap_or("").to_string(),
                if v["connected"] == true {
                    "connected"
                } else {
                    "disconnected"
                }
                .to_string(),
                v["protocol"].as_str().unwrap_or("").to_string(),
                acked("listener"),
                acked("route"),
                acked("cluster"),
                acked("endpoints"),
                acked("secret"),
                v["warming_on"].as_str().unwrap_or("-").to_string(),
                v["last_nack"].as_str().unwrap_or("-").to_string(),
            ]
        },
    )
}

fn node_json(n: &pb::NodeStatus) -> serde_json::Value {
    let short = |t: &str| resource_type(t).map_or("other", |t| t.short);
    let types: serde_json::Map<String, serde_json::Value> = n
        .types
        .iter()
        .map(|t| {
            (
                short(&t.type_url).to_string(),
                serde_json::json!({
                    "sent_version": t.sent_version, "acked_version": t.acked_version,
                    "nack_version": t.nack_version, "nack_error": t.nack_error,
                    "subscribed": t.subscribed, "missing": t.missing,
                }),
            )
        })
        .collect();
    let last_nack = n
        .types
        .iter()
        .find(|t| !t.nack_error.is_empty())
        .map(|t| format!("{}: {}", short(&t.type_url), t.nack_error));
    let warming: Vec<String> = n
        .types
        .iter()
        .flat_map(|t| {
            t.missing
                .iter()
                .map(move |m| format!("{}/{m}", short(&t.type_url)))
        })
        .collect();
    serde_json::json!({
        "id": n.id, "group": n.group, "connected": n.connected, "protocol": n.protocol,
        "connected_since_unix_ms": n.connected_since_unix_ms, "types": types, "last_nack": last_nack,
        "warming_on": (!warming.is_empty()).then(|| warming.join(" ")),
    })
}

/// Rows as an aligned table, or the values as JSON/YAML.
fn structured(
    rows: &[serde_json::Value],
    output: Output,
    header: &[&str],
    cells: impl Fn(&serde_json::Value) -> Vec<String>,
) -> String {
    match output {
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(rows).unwrap_or_default()
        ),
        Output::Yaml => serde_yaml_ng::to_string(rows).unwrap_or_default(),
        Output::Table => {
            let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
            table.extend(rows.iter().map(&cells));
            let widths: Vec<usize> = (0..header.len())
                .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
                .collect();
            table
                .iter()
                .map(|r| {
                    let line: Vec<String> = r
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    format!("{}\n", line.join("  ").trim_end())
                })
                .collect()
        }
    }
}

/// Resource documents: YAML as the server sent them, JSON, or a TYPE/NAME table.
fn documents(yaml: &str, output: Output) -> Result<String, String> {
    use serde::Deserialize;
    let values: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(yaml)
        .map(serde_json::Value::deserialize)
        .filter(|v| !matches!(v, Ok(serde_json::Value::Null)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(match output {
        Output::Yaml => yaml.to_string(),
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&values).unwrap_or_default()
        ),
        Output::Table => structured(&values, Output::Table, &["TYPE", "NAME"], |v| {
            let t = v["@type"]
                .as_str()
                .unwrap_or("")
                .rsplit('.')
                .next()
                .unwrap_or("")
                .to_string();
            vec![t, v["name"].as_str().unwrap_or("").to_string()]
        }),
    })
}

/// `+ type name` for additions, `~ type name` then `  path: live -> proposed` per field.
fn diff_text(r: &pb::DiffResponse, output: Output) -> String {
    let short = |t: &str| t.rsplit('.').next().unwrap_or(t).to_ascii_lowercase();
    if output != Output::Table {
        let rows: Vec<serde_json::Value> = r
            .resources
            .iter()
            .map(|d| serde_json::json!({
                "type": short(&d.type_url), "name": d.name, "change": d.change,
                "fields": d.fields.iter().map(|f| serde_json::json!({ "path": f.path, "live": f.live, "proposed": f.proposed })).collect::<Vec<_>>(),
            }))
            .collect();
        return structured(&rows, output, &[], |_| Vec::new());
    }
    if r.resources.is_empty() {
        return "no changes\n".to_string();
    }
    let mut out = String::new();
    for d in &r.resources {
        let mark = if d.change == "added" { "+" } else { "~" };
        out.push_str(&format!("{mark} {} {}\n", short(&d.type_url), d.name));
        for f in &d.fields {
            let show = |v: &str| {
                if v.is_empty() {
                    "(absent)".to_string()
                } else {
                    v.to_string()
                }
            };
            out.push_str(&format!(
                "    {}: {} -> {}\n",
                f.path,
                show(&f.live),
                show(&f.proposed)
            ));
        }
    }
    out
}
