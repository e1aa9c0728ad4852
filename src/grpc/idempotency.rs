//! `x-idempotency-key` (the reference family's `ClientToken`): a caller
//! that retries a mutating request with the same key gets the first
//! response again instead of a second change. The app keeps the response
//! in the change's own transaction; this module turns the header and the
//! request into the key's identity, and a kept response back into a reply.

use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::app::{Done, Idempotent};
use crate::domain::access::Caller;
use crate::error::{Error, ParamViolation};
use crate::store::idempotency::KeyUse;

/// Metadata key of the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "x-idempotency-key";

/// Longest key accepted, in characters.
const MAX_KEY_CHARS: usize = 128;

/// How a mutating rpc answers: built from the app's result, or a kept
/// response replayed.
pub(crate) struct Replies<T, R> {
    request_id: String,
    build: fn(&str, &T) -> R,
    key: Option<KeyUse>,
}

impl<T: 'static, R: Message + Default + 'static> Replies<T, R> {
    /// Reads the key, if the caller sent one, and fingerprints `request`.
    /// A key is scoped by the caller's token and the method, and kept
    /// under the request's instance.
    pub(crate) fn new(
        metadata: &MetadataMap,
        caller: &Caller,
        method: &'static str,
        instance: &str,
        request: &impl Message,
        request_id: &str,
        build: fn(&str, &T) -> R,
    ) -> Result<Self, Error> {
        let key = idempotency_key(metadata)?.map(|key| KeyUse {
            instance_id: instance.to_owned(),
            caller: caller.token_id.clone(),
            method,
            key,
            fingerprint: Sha256::digest(request.encode_to_vec()).into(),
        });
        Ok(Self {
            request_id: request_id.to_owned(),
            build,
            key,
        })
    }

    /// What the app needs to keep the response with the change.
    pub(crate) fn idempotent(&self) -> Option<Idempotent<T>> {
        let (build, request_id) = (self.build, self.request_id.clone());
        self.key.clone().map(|key| Idempotent {
            key,
            encode: Arc::new(move |out: &T| build(&request_id, out).encode_to_vec()),
        })
    }

    /// The reply: built now, or the kept one (which carries the first
    /// request's RequestId).
    pub(crate) fn answer(&self, done: Done<T>) -> Result<R, Error> {
        match done {
            Done::Fresh(out) => Ok((self.build)(&self.request_id, &out)),
            Done::Replayed(kept) => R::decode(kept.as_slice()).map_err(|e| {
                Error::Internal(anyhow::Error::new(e).context("Failed to decode a kept response"))
            }),
        }
    }
}

/// The caller's key: 1 to 128 printable ASCII characters, or absent.
fn idempotency_key(metadata: &MetadataMap) -> Result<Option<String>, Error> {
    let Some(raw) = metadata.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY_CHARS).contains(&k.len()))
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::Parameters(vec![ParamViolation::invalid(
                IDEMPOTENCY_HEADER,
                format!("It must be 1 to {MAX_KEY_CHARS} printable ASCII characters"),
            )])
        })?;
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(IDEMPOTENCY_HEADER, key.parse().unwrap());
        m
    }

    #[test]
    fn keys_are_short_printable_ascii() {
        assert_eq!(idempotency_key(&MetadataMap::new()).unwrap(), None);
        assert_eq!(
            idempotency_key(&with_key("retry-1")).unwrap().as_deref(),
            Some("retry-1")
        );
        for bad in ["", "two words", &"k".repeat(129)] {
            let err = idempotency_key(&with_key(bad)).unwrap_err();
            assert_eq!(err.code(), "Parameter.Invalid", "{bad:?}");
        }
    }
}
