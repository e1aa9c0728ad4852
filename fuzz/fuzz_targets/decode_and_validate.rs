//! Feeds arbitrary bytes to the request decoding and parameter checks of
//! every rpc, exactly as the server runs them: `grpc::codec::decode` (the
//! generated servers' codec) and, when that succeeds, the handler's
//! `grpc::parse::*`. The first byte picks the rpc.
//!
//! Beyond "never panics", it holds each outcome to the error contract:
//! undecodable bytes are `Request.Malformed`, bad parameters are
//! `Parameter.Blank`/`Parameter.Invalid` with at least one violation, and
//! the gRPC status a client would get stays small whatever was sent (values
//! are echoed cut short).

#![no_main]

use ccc_callcontrol::error::Error;
use ccc_callcontrol::grpc::codec::decode;
use ccc_callcontrol::grpc::parse;
use ccc_callcontrol::grpc::status::to_status;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The most a status message plus its details may weigh: the echo of one
/// value is at most 32 characters, the rest is our own text.
const MAX_STATUS_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, bytes)) = data.split_first() else {
        return;
    };
    match rpc % 10 {
        0 => check(bytes, parse::parse_start_conference),
        1 => check(bytes, parse::parse_end_conference),
        2 => check(bytes, parse::parse_poll_user_status),
        3 => check(bytes, parse::parse_ready_for_service),
        4 => check(bytes, parse::parse_report_channel_event),
        5 => check(bytes, parse::parse_create_instance),
        6 => check(bytes, parse::parse_create_user),
        7 => check(bytes, parse::parse_create_access_token),
        8 => check(bytes, parse::parse_revoke_access_token),
        _ => check(bytes, parse::parse_watch_events),
    }
});

fn check<R: Message + Default, T>(bytes: &[u8], parse: fn(&R) -> Result<T, Error>) {
    let request = match decode::<R>(bytes) {
        Ok(request) => request,
        Err(e) => {
            assert_eq!(e.code(), "Request.Malformed");
            assert_small(&e);
            return;
        }
    };
    if let Err(e) = parse(&request) {
        let Error::Parameters(violations) = &e else {
            panic!("parameter checks failed with {e:?}");
        };
        assert!(!violations.is_empty());
        assert!(matches!(e.code(), "Parameter.Blank" | "Parameter.Invalid"));
        assert_small(&e);
    }
}

fn assert_small(e: &Error) {
    let status = to_status(e, "FUZZ");
    let size = status.message().len() + status.details().len();
    assert!(
        size <= MAX_STATUS_BYTES,
        "{size} bytes: {}",
        status.message()
    );
}
