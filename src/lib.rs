//! Call control for a self-hosted contact center: the Alibaba Cloud Contact
//! Center 2020-07-01 contract (EndConference and its siblings) over gRPC,
//! with every call, channel and agent kept in PostgreSQL.
//!
//! Where things live:
//! - [`domain`]: the rules, pure Rust (no I/O);
//! - [`store`]: PostgreSQL only: one query to load what an action needs,
//!   one statement to write what it decided;
//! - [`app`]: the actions, each a unit of work: load → decide → guarded
//!   write;
//! - [`grpc`]: translation between proto and domain, and the one place that
//!   maps [`error::Error`] to a gRPC status;
//! - [`startup`], [`config`], [`telemetry`]: wiring; [`measure`]: every
//!   Prometheus metric, by name; [`cli`]: the `token`
//!   subcommands; `main.rs` only calls them;
//! - [`bench`]: the `bench` subcommand, a load generator that is only a
//!   gRPC client of the service (docs/performance.md).

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod measure;
pub mod startup;
pub mod store;
pub mod telemetry;

/// The generated protobuf and gRPC code for `proto/ccc/v20200701`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("ccc.v20200701");

    /// The encoded descriptor set of every `.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ccc_descriptor");
}
