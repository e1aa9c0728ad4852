//! Test infrastructure that breaks the database on purpose: a private
//! PostgreSQL the test may stop and start ([`private_pg`]), and a TCP proxy
//! that can slow, silence or cut the connections to it ([`proxy`]). The
//! shared server the rest of the suite uses is never touched. Also the
//! real binary as a process ([`binary`], shared with `tests/otlp.rs`), and
//! certificates made per test ([`pki`]).

#[path = "../../common/binary.rs"]
pub mod binary;
pub mod pki;
pub mod private_pg;
pub mod proxy;
