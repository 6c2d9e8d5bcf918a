//! Locates the FileDescriptorSet that the `envoy-types` crate ships (but does not export)
//! and copies it into OUT_DIR, so proto3-JSON/YAML authoring can use `prost-reflect`
//! without copying Envoy's `.proto` files or descriptors into this repository.

use std::path::{Path, PathBuf};

const ENVOY_TYPES_DIR: &str = "envoy-types-0.7.7";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    let source = find_descriptor_set().unwrap_or_else(|| {
        panic!(
            "could not find {ENVOY_TYPES_DIR}/src/generated/types.bin in the cargo registry; \
             set SLUICE_ENVOY_DESCRIPTORS to its path"
        )
    });
    println!("cargo:rerun-if-changed={}", source.display());
    std::fs::copy(&source, &out).expect("copy envoy descriptor set");
}

fn find_descriptor_set() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=SLUICE_ENVOY_DESCRIPTORS");
    if let Ok(path) = std::env::var("SLUICE_ENVOY_DESCRIPTORS") {
        return Some(PathBuf::from(path));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registry = cargo_home.join("registry").join("src");
    for index in std::fs::read_dir(registry).ok()?.flatten() {
        let candidate = index
            .path()
            .join(ENVOY_TYPES_DIR)
            .join("src/generated/types.bin");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}
