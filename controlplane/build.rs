//! Compiles the operator API (`proto/sluice/admin/v1/admin.proto`) with `protox`, a
//! pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let file = "sluice/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::compile([file], [proto_root]).expect("compile admin.proto");
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .expect("generate the admin API");
}
