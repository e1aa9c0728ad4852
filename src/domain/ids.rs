//! Identifiers and numbers that cross the service's edge, parsed once into
//! types that cannot hold a malformed value ("parse, don't validate").
//!
//! Each `parse` takes the documented JSON name of the parameter it reads, so
//! a failure names the field the caller sent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ParamViolation;

/// Milliseconds since the Unix epoch: the contract's unit of time.
pub type Millis = i64;

fn non_blank<'a>(field: &'static str, raw: &'a str) -> Result<&'a str, ParamViolation> {
    if raw.trim().is_empty() {
        Err(ParamViolation::blank(field))
    } else {
        Ok(raw)
    }
}

fn is_instance_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

fn is_login_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn all_digits(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a value read back from the store, which only ever holds
            /// values that were parsed on the way in.
            pub fn from_trusted(raw: impl Into<String>) -> Self {
                Self(raw.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A tenant: 1 to 64 lowercase letters, digits and '-', not starting
    /// with '-'.
    InstanceId
);
string_id!(
    /// An agent's login inside its instance: 1 to 64 letters, digits, '.',
    /// '_' and '-'.
    LoginName
);
string_id!(
    /// An agent: `LoginName@InstanceId`.
    UserId
);
string_id!(
    /// A call: `job-` followed by 1 to 32 digits.
    JobId
);
string_id!(
    /// A channel of a call, as the service issued it.
    ChannelId
);
string_id!(
    /// An agent's extension: 2 to 10 digits.
    Extension
);
string_id!(
    /// A phone number: an optional '+' then 5 to 20 digits.
    PhoneNumber
);

impl InstanceId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        if is_instance_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParamViolation::invalid(
                field,
                "It must be 1 to 64 lowercase letters, digits or '-', not starting with '-'",
            ))
        }
    }
}

impl LoginName {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        if is_login_name(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParamViolation::invalid(
                field,
                "It must be 1 to 64 letters, digits, '.', '_' or '-'",
            ))
        }
    }
}

impl UserId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        match raw.split_once('@') {
            Some((login, instance)) if is_login_name(login) && is_instance_id(instance) => {
                Ok(Self(raw.to_owned()))
            }
            _ => Err(ParamViolation::invalid(
                field,
                "It must be of the form LoginName@InstanceId, e.g. agent@ccc-test",
            )),
        }
    }

    /// The agent ID the contract derives from a login name and its instance.
    pub fn of(login: &LoginName, instance: &InstanceId) -> Self {
        Self(format!("{login}@{instance}"))
    }
}

impl JobId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        match raw.strip_prefix("job-") {
            Some(digits) if all_digits(digits, 1..=32) => Ok(Self(raw.to_owned())),
            _ => Err(ParamViolation::invalid(
                field,
                "It must be 'job-' followed by 1 to 32 digits",
            )),
        }
    }

    /// A new call ID: the creation time then six random digits, so IDs sort
    /// by time and two replicas creating calls in the same millisecond
    /// still (almost surely) differ; the primary key catches the rest.
    pub fn generate(now: Millis, random: u32) -> Self {
        Self(format!("job-{now}{:06}", random % 1_000_000))
    }
}

impl ChannelId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        if raw.len() <= 256 && raw.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParamViolation::invalid(
                field,
                "It must be at most 256 printable ASCII characters",
            ))
        }
    }

    /// The documented form: `ch:user:<originator>-><destination>:<ms>:<job>`.
    pub fn new(originator: &str, destination: &str, at: Millis, job: &JobId) -> Self {
        Self(format!("ch:user:{originator}->{destination}:{at}:{job}"))
    }
}

impl Extension {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        Self::recognize(raw)
            .ok_or_else(|| ParamViolation::invalid(field, "It must be 2 to 10 digits"))
    }

    /// `Some` if `raw` has the shape of an extension.
    pub fn recognize(raw: &str) -> Option<Self> {
        all_digits(raw, 2..=10).then(|| Self(raw.to_owned()))
    }
}

impl PhoneNumber {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ParamViolation> {
        let raw = non_blank(field, raw)?;
        Self::recognize(raw).ok_or_else(|| {
            ParamViolation::invalid(field, "It must be an optional '+' then 5 to 20 digits")
        })
    }

    /// `Some` if `raw` has the shape of a phone number.
    pub fn recognize(raw: &str) -> Option<Self> {
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        all_digits(digits, 5..=20).then(|| Self(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Violation;

    fn invalid<T: fmt::Debug>(r: Result<T, ParamViolation>) -> bool {
        matches!(
            r,
            Err(ParamViolation {
                violation: Violation::Invalid(_),
                ..
            })
        )
    }

    fn blank<T: fmt::Debug>(r: Result<T, ParamViolation>) -> bool {
        matches!(
            r,
            Err(ParamViolation {
                violation: Violation::Blank,
                ..
            })
        )
    }

    #[test]
    fn instance_ids() {
        assert!(InstanceId::parse("InstanceId", "ccc-test").is_ok());
        assert!(InstanceId::parse("InstanceId", "9cfad875-6260-4a53-ab6e-b13e3fb31f7d").is_ok());
        assert!(blank(InstanceId::parse("InstanceId", "")));
        assert!(blank(InstanceId::parse("InstanceId", "  ")));
        assert!(invalid(InstanceId::parse("InstanceId", "CCC")));
        assert!(invalid(InstanceId::parse("InstanceId", "-x")));
        assert!(invalid(InstanceId::parse("InstanceId", "a b")));
        assert!(invalid(InstanceId::parse("InstanceId", &"a".repeat(65))));
        assert!(InstanceId::parse("InstanceId", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn user_ids_are_login_at_instance() {
        assert!(UserId::parse("UserId", "agent@ccc-test").is_ok());
        assert!(UserId::parse("UserId", "a.b_c-d@x1").is_ok());
        assert!(invalid(UserId::parse("UserId", "agent")));
        assert!(invalid(UserId::parse("UserId", "@ccc-test")));
        assert!(invalid(UserId::parse("UserId", "agent@")));
        assert!(invalid(UserId::parse("UserId", "a@b@c")));
        assert!(blank(UserId::parse("UserId", "")));
        let id = UserId::of(
            &LoginName::parse("LoginName", "agent").unwrap(),
            &InstanceId::parse("InstanceId", "ccc-test").unwrap(),
        );
        assert_eq!(id.as_str(), "agent@ccc-test");
    }

    #[test]
    fn job_ids() {
        assert!(JobId::parse("JobId", "job-6538214103685").is_ok());
        assert!(invalid(JobId::parse("JobId", "job-")));
        assert!(invalid(JobId::parse("JobId", "job-12a")));
        assert!(invalid(JobId::parse("JobId", "6538214103685")));
        assert!(invalid(JobId::parse(
            "JobId",
            &format!("job-{}", "1".repeat(33))
        )));
        let generated = JobId::generate(1_732_460_000_000, 42);
        assert_eq!(generated.as_str(), "job-1732460000000000042");
        assert!(JobId::parse("JobId", generated.as_str()).is_ok());
    }

    #[test]
    fn extensions_and_numbers() {
        assert!(Extension::recognize("8001").is_some());
        assert!(Extension::recognize("8").is_none());
        assert!(Extension::recognize("80a1").is_none());
        assert!(PhoneNumber::recognize("13900001234").is_some());
        assert!(PhoneNumber::recognize("+8613900001234").is_some());
        assert!(PhoneNumber::recognize("1234").is_none());
        assert!(PhoneNumber::recognize("++12345").is_none());
        assert!(PhoneNumber::recognize(&"1".repeat(21)).is_none());
    }

    #[test]
    fn channel_ids_have_the_documented_form() {
        let job = JobId::from_trusted("job-1");
        assert_eq!(
            ChannelId::new("8001", "13900001234", 1609138902226, &job).as_str(),
            "ch:user:8001->13900001234:1609138902226:job-1"
        );
        assert!(invalid(ChannelId::parse("ChannelId", "a b")));
    }
}
