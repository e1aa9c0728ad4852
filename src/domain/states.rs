//! The contract's enumerations as Rust enums. Their names are the documented
//! strings; the store keeps them as those strings and the gRPC layer maps
//! them to the proto enums.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The documented name, e.g. `"RELEASED"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: stringify!($name), name: s.to_owned() }),
                }
            }
        }
    };
}

/// A stored name that no enumeration value has: the database was written by
/// something other than this service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    kind: &'static str,
    name: String,
}

named_enum!(
    /// One party's leg of a call. Moves forward only, in declaration order.
    ChannelState {
        None = "NONE",
        Created = "CREATED",
        Ringing = "RINGING",
        EarlyMedia = "EARLY_MEDIA",
        Answered = "ANSWERED",
        Released = "RELEASED",
        Retired = "RETIRED",
    }
);

named_enum!(
    CallType {
        Inbound = "INBOUND",
        Outbound = "OUTBOUND",
        Internal = "INTERNAL",
        Consultant = "CONSULTANT",
        Conference = "CONFERENCE",
        Barge = "BARGE",
        Monitor = "MONITOR",
        Coach = "COACH",
        Intercept = "INTERCEPT",
        Back2Back = "BACK2BACK",
        Predictive = "PREDICTIVE",
    }
);

named_enum!(
    /// What an agent is doing. `Working` is after-call work.
    UserState {
        Offline = "OFFLINE",
        Ready = "READY",
        Break = "BREAK",
        Ringing = "RINGING",
        Dialing = "DIALING",
        Talking = "TALKING",
        Working = "WORKING",
    }
);

named_enum!(
    WorkMode {
        OnSite = "ON_SITE",
        OffSite = "OFF_SITE",
        OfficePhone = "OFFICE_PHONE",
    }
);

named_enum!(
    DeviceState {
        Unregistered = "UNREGISTERED",
        Offline = "OFFLINE",
        Online = "ONLINE",
    }
);

impl ChannelState {
    /// The states in which a party is still on the call.
    pub const LIVE: &'static [ChannelState] = &[
        ChannelState::Created,
        ChannelState::Ringing,
        ChannelState::EarlyMedia,
        ChannelState::Answered,
    ];

    pub fn is_live(self) -> bool {
        Self::LIVE.contains(&self)
    }

    /// Released or retired: the party has left for good.
    pub fn is_gone(self) -> bool {
        matches!(self, ChannelState::Released | ChannelState::Retired)
    }

    /// Position on the one-way road NONE → … → RETIRED.
    fn rank(self) -> u8 {
        self as u8
    }

    /// Whether a channel in `self` may move to `next`: forward only, never
    /// out of RELEASED (RETIRED is an archival state no event enters).
    pub fn may_move_to(self, next: ChannelState) -> bool {
        !self.is_gone() && next != ChannelState::Retired && next.rank() > self.rank()
    }

    /// The states a channel in `self` could have been moved from to reach
    /// `self` legally; used to say what was expected.
    pub fn predecessors_of(next: ChannelState) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|s| s.may_move_to(next))
            .map(|s| s.as_str())
            .collect()
    }
}

impl UserState {
    /// States from which an agent may start a conference: signed in and not
    /// on a call.
    pub const IDLE: &'static [UserState] =
        &[UserState::Ready, UserState::Working, UserState::Break];

    /// States in which the agent has a live channel somewhere.
    pub const ON_A_CALL: &'static [UserState] =
        &[UserState::Ringing, UserState::Dialing, UserState::Talking];

    pub fn names(states: &[UserState]) -> Vec<&'static str> {
        states.iter().map(|s| s.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelState::{Answered, Created, EarlyMedia, Released, Retired, Ringing};

    #[test]
    fn names_round_trip() {
        for s in ChannelState::ALL {
            assert_eq!(s.as_str().parse::<ChannelState>().unwrap(), *s);
        }
        for s in UserState::ALL {
            assert_eq!(s.as_str().parse::<UserState>().unwrap(), *s);
        }
        for s in CallType::ALL {
            assert_eq!(s.as_str().parse::<CallType>().unwrap(), *s);
        }
        for s in WorkMode::ALL {
            assert_eq!(s.as_str().parse::<WorkMode>().unwrap(), *s);
        }
        for s in DeviceState::ALL {
            assert_eq!(s.as_str().parse::<DeviceState>().unwrap(), *s);
        }
        assert!("ringing".parse::<ChannelState>().is_err());
    }

    /// Every (from, to) pair of channel states, spelled out.
    #[test]
    fn channel_states_only_move_forward() {
        let allowed: &[(ChannelState, &[ChannelState])] = &[
            (
                ChannelState::None,
                &[Created, Ringing, EarlyMedia, Answered, Released],
            ),
            (Created, &[Ringing, EarlyMedia, Answered, Released]),
            (Ringing, &[EarlyMedia, Answered, Released]),
            (EarlyMedia, &[Answered, Released]),
            (Answered, &[Released]),
            (Released, &[]),
            (Retired, &[]),
        ];
        for (from, tos) in allowed {
            for to in ChannelState::ALL {
                assert_eq!(from.may_move_to(*to), tos.contains(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn live_and_gone() {
        assert_eq!(ChannelState::ALL.iter().filter(|s| s.is_live()).count(), 4);
        assert!(!ChannelState::None.is_live() && !ChannelState::None.is_gone());
        assert!(Released.is_gone() && Retired.is_gone());
        assert_eq!(
            ChannelState::predecessors_of(Answered),
            vec!["NONE", "CREATED", "RINGING", "EARLY_MEDIA"]
        );
    }
}
