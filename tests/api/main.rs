//! Integration tests: every test gets its own freshly migrated PostgreSQL
//! database (`#[sqlx::test]`, which needs `DATABASE_URL` pointing at the
//! server; `scripts/test` sets it) and the real gRPC server on an ephemeral
//! port, reached through real tonic clients.

mod helpers;
mod support;

mod access;
mod admin;
mod bad_inputs;
mod bench;
mod concurrency;
mod contract_json;
mod database_tls;
mod end_conference;
mod events;
mod failures;
mod faults;
mod health;
mod kept_connections;
mod known_agents;
mod known_calls;
mod logs;
mod poll_and_ready;
mod releases;
mod reliability;
mod report_channel_event;
mod round_trips;
mod scale;
mod shutdown;
mod start_conference;
mod state_domains;
mod tls;
mod tokens;
