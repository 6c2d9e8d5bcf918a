//! Keeps `docs/xds-support.md` honest: it must equal the rendering of the `SUPPORTED`
//! table, and a fixture config must author every field the table lists (and be accepted).

use std::collections::BTreeSet;
use std::path::Path;

use prost_reflect::{Kind, MessageDescriptor};
use xds_types::fields::{render_markdown, SUPPORTED};

fn docs_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/xds-support.md")
}

#[test]
fn xds_support_doc_matches_the_table() {
    let rendered = render_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(docs_path(), &rendered).unwrap();
    }
    let on_disk = std::fs::read_to_string(docs_path()).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/xds-support.md is stale: run UPDATE_DOCS=1 cargo test -p xds-types --test docs"
    );
}

/// `(message, field)` for every key authored in `json` (defaults included, which proto3
/// presence would hide), following `Any` by its `@type`.
fn authored(
    json: &serde_json::Value,
    message: &MessageDescriptor,
    out: &mut BTreeSet<(String, String)>,
) {
    let Some(object) = json.as_object() else {
        return;
    };
    let message = match object.get("@type").and_then(|t| t.as_str()) {
        Some(url) if message.full_name() == "google.protobuf.Any" => {
            let name = xds_types::type_urls::message_name(url);
            xds_types::decode::pool()
                .get_message_by_name(name)
                .expect("known @type")
        }
        _ => message.clone(),
    };
    if message.full_name().starts_with("google.protobuf.") {
        return;
    }
    out.insert((message.full_name().to_string(), String::new()));
    for (key, value) in object {
        if key == "@type" {
            continue;
        }
        let field = message
            .get_field_by_name(key)
            .or_else(|| message.get_field_by_json_name(key))
            .unwrap_or_else(|| panic!("{}.{key} is not a field", message.full_name()));
        out.insert((message.full_name().to_string(), field.name().to_string()));
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() {
            let value_field = inner.map_entry_value_field();
            if let (Kind::Message(v), Some(map)) = (value_field.kind(), value.as_object()) {
                map.values().for_each(|item| authored(item, &v, out));
            }
        } else if field.is_list() {
            value
                .as_array()
                .into_iter()
                .flatten()
                .for_each(|item| authored(item, &inner, out));
        } else {
            authored(value, &inner, out);
        }
    }
}

#[test]
fn every_supported_field_is_used_by_a_fixture() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/every_field.yaml"),
    )
    .unwrap();
    xds_types::Bootstrap::from_yaml(&text).expect("the fixture is a valid bootstrap");
    let json: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let root = xds_types::decode::message_descriptor(xds_types::bootstrap::BOOTSTRAP).unwrap();
    let mut seen = BTreeSet::new();
    authored(&json, &root, &mut seen);
    let resources = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/every_resource.yaml"),
    )
    .unwrap();
    for document in serde_yaml_ng::Deserializer::from_str(&resources) {
        use serde::Deserialize;
        let json = serde_json::Value::deserialize(document).unwrap();
        let url = json["@type"]
            .as_str()
            .expect("every resource names its @type");
        let message = xds_types::decode::pool()
            .get_message_by_name(xds_types::type_urls::message_name(url))
            .expect("known @type");
        authored(&json, &message, &mut seen);
    }
    let mut missing = Vec::new();
    for m in SUPPORTED {
        if !seen.contains(&(m.message.to_string(), String::new())) {
            missing.push(m.message.to_string());
        }
        for (field, _) in m.fields {
            if !seen.contains(&(m.message.to_string(), field.to_string())) {
                missing.push(format!("{}.{field}", m.message));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "supported but not exercised by a fixture: {missing:#?}"
    );
}
