//! Turning request bytes into messages, with our error vocabulary: bytes
//! that are not a message of the method's request type are
//! `Request.Malformed` (INVALID_ARGUMENT) and a request over the size limit
//! is `Request.TooLarge` (RESOURCE_EXHAUSTED). Left alone, tonic answers
//! both with statuses of its own (INTERNAL with prost's words, OUT_OF_RANGE)
//! and no ErrorInfo, so clients could not branch on them.
//!
//! Two pieces, because tonic fails a request in two places: [`ProtoCodec`]
//! (the generated code's codec, chosen in `build.rs`) sees every message
//! tonic hands it; [`DecodeGuard`] wraps each generated server and rewrites
//! the failures tonic decides before any codec runs (a message over the
//! limit, a frame cut short, no message at all).

use std::any::type_name;
use std::convert::Infallible;
use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic_prost::{ProstCodec, ProstEncoder};

use super::request::new_request_id;
use super::status::to_status;
use crate::error::Error;

/// Decodes one message of type `U`, or says which type it failed to be.
/// The decoder's own error (field paths, wire details) goes to the debug
/// log only: it describes our schema, not what the caller should fix.
pub fn decode<U: Message + Default>(bytes: impl Buf) -> Result<U, Error> {
    U::decode(bytes).map_err(|e| {
        let message = short_type_name::<U>();
        tracing::debug!(request_type = message, error = %e, "undecodable request");
        Error::Malformed(message)
    })
}

/// `StartConferenceRequest` for `ccc_callcontrol::proto::StartConferenceRequest`.
fn short_type_name<U>() -> &'static str {
    let full = type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// tonic-prost's codec with [`decode`] as its decoder. The generated
/// clients use it too (the tests' clients), where a bad response would read
/// as `Request.Malformed`; our server never sends one.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

/// The decoding half of [`ProtoCodec`].
#[derive(Debug)]
pub struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The caller's x-request-id is out of reach here: a new one.
        decode(buf)
            .map(Some)
            .map_err(|e| to_status(&e, &new_request_id()))
    }
}

/// Wraps one generated server (whose `max_decoding_message_size` is
/// `limit`) and turns the statuses tonic makes on its own while reading a
/// request into ours. tonic rejects a message over the limit from its
/// 5-byte frame header, before reading the body, so memory stays bounded by
/// the limit; this only rewrites the answer.
///
/// A status of ours always carries ErrorInfo; one without it, on a request
/// to one of our services, can only come from tonic's request reading:
/// OUT_OF_RANGE is the size limit, INTERNAL a frame cut short, a missing
/// message or a bad compression flag. Anything else (UNIMPLEMENTED for an
/// unknown method) passes as it is. A compressed request (`grpc-encoding`
/// other than `identity`) is refused before tonic sees it, as
/// `Request.UnsupportedEncoding`.
#[derive(Debug, Clone)]
pub struct DecodeGuard<S> {
    inner: S,
    limit: usize,
}

impl<S> DecodeGuard<S> {
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: NamedService> NamedService for DecodeGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for DecodeGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(encoding) = unsupported_encoding(request.headers()) {
            // tonic would answer UNIMPLEMENTED without ErrorInfo; the same
            // code, ours, and (as gRPC asks) what we accept.
            let e = Error::UnsupportedEncoding(encoding);
            let mut response = to_status(&e, &new_request_id()).into_http();
            response.headers_mut().insert(
                "grpc-accept-encoding",
                http::HeaderValue::from_static("identity"),
            );
            return Box::pin(async move { Ok(response) });
        }
        let message = request_type(request.uri().path());
        let limit = self.limit;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let Some(status) = response.extensions().get::<Status>() else {
                return Ok(response);
            };
            if !status.details().is_empty() {
                return Ok(response);
            }
            let ours = match status.code() {
                tonic::Code::OutOfRange => Error::TooLarge { limit },
                tonic::Code::Internal => Error::Malformed(message),
                _ => return Ok(response),
            };
            tracing::debug!(
                request_type = message,
                code = ?status.code(),
                tonic = status.message(),
                "request refused while reading it"
            );
            Ok(to_status(&ours, &new_request_id()).into_http())
        })
    }
}

/// The request's `grpc-encoding` if it is one this service does not
/// accept (anything but `identity`), shortened and made printable for the
/// message that names it.
fn unsupported_encoding(headers: &http::HeaderMap) -> Option<String> {
    let raw = headers.get("grpc-encoding")?.as_bytes();
    if raw == b"identity" {
        return None;
    }
    let shown: String = raw
        .iter()
        .take(32)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect();
    Some(if shown.is_empty() {
        "''".to_owned()
    } else {
        shown
    })
}

/// The request message type of a method path, for `Request.Malformed`
/// found before the codec knows the type. A unit test checks this against
/// every method of the contract.
fn request_type(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "StartConference" => "StartConferenceRequest",
        "EndConference" => "EndConferenceRequest",
        "PollUserStatus" => "PollUserStatusRequest",
        "ReadyForService" => "ReadyForServiceRequest",
        "ReportChannelEvent" => "ReportChannelEventRequest",
        "CreateInstance" => "CreateInstanceRequest",
        "CreateUser" => "CreateUserRequest",
        "CreateAccessToken" => "CreateAccessTokenRequest",
        "RevokeAccessToken" => "RevokeAccessTokenRequest",
        "WatchEvents" => "WatchEventsRequest",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use prost_types::FileDescriptorSet;

    use super::*;
    use crate::proto;

    #[test]
    fn every_method_names_its_request_type() {
        let set = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in set.file.iter().filter(|f| f.package() == "ccc.v20200701") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/ccc.v20200701.{}/{}", service.name(), method.name());
                    let input = method.input_type().rsplit('.').next().unwrap();
                    assert_eq!(request_type(&path), input, "{path}");
                    methods += 1;
                }
            }
        }
        assert_eq!(methods, 10);
    }

    #[test]
    fn undecodable_bytes_are_malformed_and_say_only_the_type() {
        // Field 1 is InstanceId, a string, in every request type.
        let cases: &[&[u8]] = &[
            // Field 1, length 2, not UTF-8.
            &[0x0a, 0x02, 0xff, 0xfe],
            // Field 1 as a varint where a string belongs.
            &[0x08, 0x01],
            // The length varint cut short.
            &[0x0a, 0x80],
            // A length beyond the end.
            &[0x0a, 0x05, b'a'],
            // Garbage.
            &[0xff, 0xff, 0xff, 0xff, 0xff],
        ];
        for bytes in cases {
            let e = decode::<proto::StartConferenceRequest>(*bytes).unwrap_err();
            assert_eq!(e.code(), "Request.Malformed", "{bytes:?}");
            assert_eq!(
                e.to_string(),
                "The request could not be decoded as a StartConferenceRequest message."
            );
        }
        let ok = decode::<proto::StartConferenceRequest>(&[][..]).unwrap();
        assert_eq!(ok, proto::StartConferenceRequest::default());
    }
}
