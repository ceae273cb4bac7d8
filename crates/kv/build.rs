//! Generates the etcd v3 API types and tonic services from `proto/` with a vendored `protoc`,
//! so building Flotilla never needs a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC from the environment; build scripts run single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/kv.proto",
                "proto/rpc.proto",
                "proto/v3lock.proto",
                "proto/forward.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
