//! Compiles the operator API (`proto/sluice/admin/v1/admin.proto`) with `protox`, a
//! pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() {
    // Read when the script runs, not when it was compiled: a build script cached in a
    // shared target directory may run for a checkout at another path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let proto_root = format!("{manifest_dir}/../proto");
    let proto_root = proto_root.as_str();
    let file = "sluice/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::compile([file], [proto_root]).expect("compile admin.proto");
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .expect("generate the admin API");
}
