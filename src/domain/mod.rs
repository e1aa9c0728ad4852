//! The rules of calls, channels and agents: plain Rust, no I/O. Nothing in
//! here may depend on tokio, sqlx or tonic, or read a clock: callers load the
//! state, pass the time in, and persist what the rules decide.
//!
//! - [`ids`]: identifiers parsed at the edge;
//! - [`states`]: the enumerations and which channel moves are legal;
//! - [`agent`]: an agent's state machine;
//! - [`call`]: a call, its channels, and the two-party rule;
//! - [`conference`]: StartConference, EndConference and ReportChannelEvent
//!   as decisions over loaded state;
//! - [`events`]: cursors, watch filters, and calls rebuilt from events;
//! - [`access`]: tokens, callers, and who may act where and for whom;
//! - [`privacy`]: how personal data appears in logs.

pub mod access;
pub mod agent;
pub mod call;
pub mod conference;
pub mod events;
pub mod ids;
pub mod privacy;
pub mod states;

pub use agent::Agent;
pub use call::{Call, Channel};
pub use conference::Changes;
