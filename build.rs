//! Compiles `proto/` with protox (pure Rust, no system `protoc`), writes the
//! encoded descriptor set for gRPC reflection, and generates the tonic/prost
//! stubs from that same descriptor set, so reflection and code never disagree.
//!
//! One exception: the Events service's code is described by hand
//! (tonic-build's manual builder), so that its server streams
//! `EncodedWatchEventsResponse`, a `WatchEventsResponse` encoded once per
//! replica and sent as the same bytes to every watcher
//! (`src/grpc/events.rs`). The bytes on the wire are the message's; the
//! Events client (which decodes `WatchEventsResponse`), every message type
//! and reflection are what the contract says, as before.

use std::{env, fs, path::PathBuf};

use tonic_prost_build::manual;

const PROTOS: &[&str] = &[
    "ccc/v20200701/contexts.proto",
    "ccc/v20200701/call_control.proto",
    "ccc/v20200701/telephony.proto",
    "ccc/v20200701/admin.proto",
    "ccc/v20200701/events.proto",
];

const PACKAGE: &str = "ccc.v20200701";
const CODEC: &str = "crate::grpc::codec::ProtoCodec";

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

    // Every message, and every client and server but the Events service's
    // (described by hand below): the service is left out of the set given
    // to the generator, not out of the one reflection serves.
    let mut set = compiler.file_descriptor_set();
    let (service_doc, method_doc) = take_events_service(&mut set)?;
    // Our codec: a request that does not decode gets our documented error
    // (`Request.Malformed`) instead of tonic-prost's INTERNAL.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path(CODEC)
        .compile_fds(set)?;

    // The Events client as generated from the contract, and the server
    // with the pre-encoded response type; same service and method names
    // (so the same route, `/ccc.v20200701.Events/WatchEvents`), request
    // type and codec as the generated ones.
    let events = |response: &str| {
        manual::Service::builder()
            .name("Events")
            .package(PACKAGE)
            .comment(&service_doc)
            .method(
                manual::Method::builder()
                    .name("watch_events")
                    .route_name("WatchEvents")
                    .comment(&method_doc)
                    .input_type("crate::proto::WatchEventsRequest")
                    .output_type(response)
                    .codec_path(CODEC)
                    .server_streaming()
                    .build(),
            )
            .build()
    };
    let mut code = String::new();
    for (client, response) in [
        (true, "crate::proto::WatchEventsResponse"),
        (false, "crate::proto::EncodedWatchEventsResponse"),
    ] {
        manual::Builder::new()
            .build_client(client)
            .build_server(!client)
            .out_dir(&out_dir)
            .compile(&[events(response)]);
        let file = out_dir.join(format!("{PACKAGE}.Events.rs"));
        code.push_str(&fs::read_to_string(&file)?);
        fs::remove_file(&file)?;
    }

    // Into the package's module (`crate::proto`, `tonic::include_proto!`).
    let package_file = out_dir.join(format!("{PACKAGE}.rs"));
    let mut package = fs::read_to_string(&package_file)?;
    package.push_str(
        r#"
/// A `WatchEventsResponse` already encoded (protobuf, without the gRPC
/// frame header): what the Events server streams, so that a change is
/// encoded once per replica whoever watches it. Its `prost::Message`
/// implementation (in `src/grpc/events.rs`) writes these bytes as they are.
#[derive(Clone, PartialEq, Default)]
pub struct EncodedWatchEventsResponse(pub ::prost::bytes::Bytes);
"#,
    );
    package.push_str(&code);
    fs::write(&package_file, package)?;
    Ok(())
}

/// Removes the Events service from `set`; returns the comments of the
/// service and of its one method (WatchEvents), for the code described by
/// hand.
fn take_events_service(
    set: &mut tonic_prost_build::FileDescriptorSet,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let file = set
        .file
        .iter_mut()
        .find(|f| f.name() == "ccc/v20200701/events.proto")
        .ok_or("events.proto is not in the descriptor set")?;
    let index = file
        .service
        .iter()
        .position(|s| s.name() == "Events")
        .ok_or("events.proto has no Events service")?;
    let service = &file.service[index];
    if service.method.len() != 1 || service.method[0].name() != "WatchEvents" {
        return Err(
            "the Events service changed: update build.rs, which describes it by hand".into(),
        );
    }
    // Paths in source info: 6 = FileDescriptorProto.service, 2 =
    // ServiceDescriptorProto.method.
    let comment = |path: &[i32]| {
        file.source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .map(|l| l.leading_comments().trim().to_owned())
            .unwrap_or_default()
    };
    let docs = (
        comment(&[6, index as i32]),
        comment(&[6, index as i32, 2, 0]),
    );
    file.service.remove(index);
    Ok(docs)
}
