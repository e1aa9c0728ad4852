//! Test infrastructure that breaks the database on purpose: a private
//! PostgreSQL the test may stop and start ([`private_pg`]), and a TCP proxy
//! that can slow, silence or cut the connections to it ([`proxy`]). The
//! shared server the rest of the suite uses is never touched.

pub mod private_pg;
pub mod proxy;
