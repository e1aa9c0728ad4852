//! Compiles `proto/` with protox (pure Rust, no system `protoc`), writes the
//! encoded descriptor set for gRPC reflection, and generates the tonic/prost
//! stubs from that same descriptor set, so reflection and code never disagree.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "ccc/v20200701/contexts.proto",
    "ccc/v20200701/call_control.proto",
    "ccc/v20200701/telephony.proto",
    "ccc/v20200701/admin.proto",
    "ccc/v20200701/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Source info carries the .proto comments: into the generated docs and
    // into reflection, where `grpcurl describe` shows them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    fs::write(
        out_dir.join("ccc_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Our codec: a request that does not decode gets our documented error
    // (`Request.Malformed`) instead of tonic-prost's INTERNAL.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::grpc::codec::ProtoCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
