//! Who may do what: access tokens, the caller they identify, and the rules
//! that let a caller act on an instance and for an agent. Pure: hashing is
//! arithmetic, randomness is passed in.

use std::fmt;

use sha2::{Digest, Sha256};

use super::ids::{InstanceId, Millis, UserId};
use crate::error::{Error, ParamViolation};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Provisioning and every action: in one instance, or (an operator) in
    /// all of them.
    Admin,
    /// The agent's own actions in its own instance.
    Agent,
    /// The media-plane adapter of one instance: Telephony only.
    Telephony,
}

impl Role {
    pub const ALL: &'static [Role] = &[Role::Admin, Role::Agent, Role::Telephony];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::Agent => "AGENT",
            Role::Telephony => "TELEPHONY",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller: what its token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    /// The one instance the token is for; `None` for an operator.
    pub instance: Option<InstanceId>,
    /// The agent an AGENT token is mapped to.
    pub user: Option<UserId>,
}

impl Caller {
    /// How events record this caller: the agent itself, or the role and
    /// token of a service or an admin.
    pub fn principal(&self) -> String {
        match (&self.role, &self.user, &self.instance) {
            (Role::Agent, Some(user), _) => user.to_string(),
            (Role::Admin, _, None) => format!("operator:{}", self.token_id),
            (role, _, _) => format!("{}:{}", role.as_str().to_lowercase(), self.token_id),
        }
    }
}

/// Every action, named as in the contract, with the service it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    StartConference,
    EndConference,
    PollUserStatus,
    ReadyForService,
    ReportChannelEvent,
    CreateInstance,
    CreateUser,
    CreateAccessToken,
    RevokeAccessToken,
    WatchEvents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    CallControl,
    Telephony,
    Admin,
    Events,
}

impl Action {
    fn service(self) -> Service {
        match self {
            Action::StartConference
            | Action::EndConference
            | Action::PollUserStatus
            | Action::ReadyForService => Service::CallControl,
            Action::ReportChannelEvent => Service::Telephony,
            Action::CreateInstance
            | Action::CreateUser
            | Action::CreateAccessToken
            | Action::RevokeAccessToken => Service::Admin,
            Action::WatchEvents => Service::Events,
        }
    }
}

fn denied(why: impl Into<String>) -> Error {
    Error::PermissionDenied(why.into())
}

/// May `caller` take `action` in `instance`? Decided from the token alone,
/// before anything is looked up, so the answer for an instance outside the
/// grant is the same whether or not that instance exists.
pub fn authorize(caller: &Caller, action: Action, instance: &InstanceId) -> Result<(), Error> {
    let role_may = match (caller.role, action.service()) {
        (Role::Admin, _) => action != Action::CreateInstance || caller.instance.is_none(),
        (Role::Agent, service) => matches!(service, Service::CallControl | Service::Events),
        (Role::Telephony, service) => matches!(service, Service::Telephony | Service::Events),
    };
    if !role_may {
        return Err(denied(format!(
            "The {} role may not call {action:?}.",
            caller.role
        )));
    }
    match &caller.instance {
        Some(granted) if granted != instance => Err(denied(format!(
            "The access token is not valid for instance {instance}."
        ))),
        _ => Ok(()),
    }
}

/// The agent a CallControl action acts for. A blank UserId means the
/// caller's own agent (the contract's "agent mapped to the calling
/// account"); an agent may only act for itself; an admin must name one.
pub fn acting_agent(caller: &Caller, requested: Option<UserId>) -> Result<UserId, Error> {
    match (caller.role, requested, &caller.user) {
        (Role::Agent, None, Some(own)) => Ok(own.clone()),
        (Role::Agent, Some(named), Some(own)) if &named == own => Ok(named),
        (Role::Agent, Some(named), _) => Err(denied(format!(
            "An agent may only act for itself, not for {named}."
        ))),
        (_, Some(named), _) => Ok(named),
        (_, None, _) => Err(Error::blank("UserId")),
    }
}

/// Whose changes a watch may see. An agent sees only its own (a blank
/// UserId means itself; naming another is refused); an admin or the
/// telephony adapter sees its whole instance, or the agent it names.
pub fn watched_agent(caller: &Caller, requested: Option<UserId>) -> Result<Option<UserId>, Error> {
    match caller.role {
        Role::Agent => acting_agent(caller, requested).map(Some),
        Role::Admin | Role::Telephony => Ok(requested),
    }
}

/// The prefix that makes a token recognisable (to people, and to secret
/// scanners).
pub const TOKEN_PREFIX: &str = "ccc_";
const TOKEN_BYTES: usize = 32;

/// A bearer token: `ccc_` then 64 hex digits (256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// A new token from 32 random bytes.
    pub fn from_random(bytes: [u8; TOKEN_BYTES]) -> Self {
        Self(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
    }

    /// `None` unless `raw` has the token's exact shape.
    pub fn parse(raw: &str) -> Option<Self> {
        let digits = raw.strip_prefix(TOKEN_PREFIX)?;
        (digits.len() == 2 * TOKEN_BYTES
            && digits
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| Self(raw.to_owned()))
    }

    /// The only form the store ever sees. A token has 256 random bits, so a
    /// plain SHA-256 is enough: there is nothing to guess.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The secret itself, to show once.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// Never prints the secret.
impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// A token's public handle: `tok-` then 16 hex digits.
pub fn token_id(random: [u8; 8]) -> String {
    format!("tok-{}", hex(&random))
}

/// A TokenId parameter: the shape [`token_id`] makes.
pub fn parse_token_id(field: &'static str, raw: &str) -> Result<String, ParamViolation> {
    let digits = raw.strip_prefix("tok-").unwrap_or_default();
    if raw.trim().is_empty() {
        Err(ParamViolation::blank(field))
    } else if digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_owned())
    } else {
        Err(ParamViolation::invalid(
            field,
            "It must be 'tok-' followed by 16 hex digits",
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored token as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub caller: Caller,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl TokenGrant {
    /// The caller, if the token is still good at `now`.
    pub fn usable_at(&self, now: Millis) -> Option<&Caller> {
        let expired = self.expires_at.is_some_and(|at| at <= now);
        (self.revoked_at.is_none() && !expired).then_some(&self.caller)
    }
}

/// Whom a new token may be for: an AGENT token is for exactly one agent;
/// other roles are for none; only an ADMIN token may span every instance
/// (an operator's). Violations name the parameter of CreateAccessToken.
pub fn check_subject(
    role: Role,
    names_instance: bool,
    user: Option<&UserId>,
) -> Result<(), ParamViolation> {
    match (role, names_instance, user) {
        (Role::Agent, _, None) => Err(ParamViolation::blank("UserId")),
        (Role::Admin | Role::Telephony, _, Some(_)) => Err(ParamViolation::invalid(
            "UserId",
            format!("It may only be given for an AGENT token, not {role}"),
        )),
        (Role::Agent | Role::Telephony, false, _) => Err(ParamViolation::blank("InstanceId")),
        _ => Ok(()),
    }
}

/// The most a token may live: ten years.
pub const MAX_EXPIRES_IN_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// ExpiresInSeconds: absent (never expires) or 1 second to ten years.
pub fn expires_in(raw: Option<i64>) -> Result<Option<i64>, ParamViolation> {
    match raw {
        None => Ok(None),
        Some(s) if (1..=MAX_EXPIRES_IN_SECONDS).contains(&s) => Ok(Some(s)),
        Some(s) => Err(ParamViolation::invalid(
            "ExpiresInSeconds",
            format!("It must be 1 to {MAX_EXPIRES_IN_SECONDS}, not {s}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::from_trusted(s)
    }

    fn caller(role: Role, instance: Option<&str>, user: Option<&str>) -> Caller {
        Caller {
            token_id: "tok-1".into(),
            role,
            instance: instance.map(id),
            user: user.map(UserId::from_trusted),
        }
    }

    const ACTIONS: [Action; 10] = [
        StartConference,
        EndConference,
        PollUserStatus,
        ReadyForService,
        ReportChannelEvent,
        CreateInstance,
        CreateUser,
        CreateAccessToken,
        RevokeAccessToken,
        WatchEvents,
    ];

    /// Role × action × (own instance, another one): allowed or not.
    #[test]
    fn who_may_call_what_where() {
        let operator = caller(Role::Admin, None, None);
        let admin = caller(Role::Admin, Some("a"), None);
        let agent = caller(Role::Agent, Some("a"), Some("alice@a"));
        let telephony = caller(Role::Telephony, Some("a"), None);
        // (caller, [allowed in "a" for each of ACTIONS], allowed in "b" too)
        let table: [(&Caller, [bool; 10], bool); 4] = [
            (
                &operator,
                [true, true, true, true, true, true, true, true, true, true],
                true,
            ),
            (
                &admin,
                [true, true, true, true, true, false, true, true, true, true],
                false,
            ),
            (
                &agent,
                [
                    true, true, true, true, false, false, false, false, false, true,
                ],
                false,
            ),
            (
                &telephony,
                [
                    false, false, false, false, true, false, false, false, false, true,
                ],
                false,
            ),
        ];
        for (who, allowed_in_a, elsewhere_too) in table {
            for (action, allowed) in ACTIONS.iter().zip(allowed_in_a) {
                let in_a = authorize(who, *action, &id("a"));
                let in_b = authorize(who, *action, &id("b"));
                assert_eq!(in_a.is_ok(), allowed, "{:?} {action:?} in a", who.role);
                assert_eq!(
                    in_b.is_ok(),
                    allowed && elsewhere_too,
                    "{:?} {action:?} in b",
                    who.role
                );
                for e in [in_a, in_b].into_iter().filter_map(Result::err) {
                    assert_eq!(e.code(), "Permission.Common");
                }
            }
        }
    }

    #[test]
    fn the_answer_outside_the_grant_does_not_depend_on_the_instance() {
        let admin = caller(Role::Admin, Some("a"), None);
        let exists = authorize(&admin, PollUserStatus, &id("b")).unwrap_err();
        let missing = authorize(&admin, PollUserStatus, &id("c")).unwrap_err();
        assert_eq!(
            exists.to_string().replace("instance b", "instance X"),
            missing.to_string().replace("instance c", "instance X")
        );
    }

    #[test]
    fn whom_an_action_is_for() {
        let agent = caller(Role::Agent, Some("a"), Some("alice@a"));
        let admin = caller(Role::Admin, Some("a"), None);
        let alice = || Some(UserId::from_trusted("alice@a"));
        let bob = || Some(UserId::from_trusted("bob@a"));
        assert_eq!(acting_agent(&agent, None).unwrap().as_str(), "alice@a");
        assert_eq!(acting_agent(&agent, alice()).unwrap().as_str(), "alice@a");
        assert_eq!(
            acting_agent(&agent, bob()).unwrap_err().code(),
            "Permission.Common"
        );
        assert_eq!(acting_agent(&admin, bob()).unwrap().as_str(), "bob@a");
        assert_eq!(
            acting_agent(&admin, None).unwrap_err().code(),
            "Parameter.Blank"
        );
    }

    #[test]
    fn tokens_have_one_shape_and_hide_in_debug() {
        let token = AccessToken::from_random([0xab; 32]);
        assert!(token.reveal().starts_with("ccc_abab"));
        assert_eq!(token.reveal().len(), 4 + 64);
        assert_eq!(AccessToken::parse(token.reveal()), Some(token.clone()));
        assert_eq!(format!("{token:?}"), "AccessToken(***)");
        assert!(AccessToken::parse("ccc_abc").is_none());
        assert!(AccessToken::parse(&token.reveal().to_uppercase()).is_none());
        assert!(AccessToken::parse(&token.reveal().replace("ccc_", "xyz_")).is_none());
        assert_ne!(token.hash(), AccessToken::from_random([0xac; 32]).hash());
        assert_eq!(token_id([1, 2, 3, 4, 5, 6, 7, 8]), "tok-0102030405060708");
        assert!(parse_token_id("TokenId", "tok-0102030405060708").is_ok());
        assert!(parse_token_id("TokenId", "tok-12").is_err());
        assert!(parse_token_id("TokenId", "").is_err());
    }

    #[test]
    fn revoked_and_expired_tokens_are_not_usable() {
        let grant = |expires_at, revoked_at| TokenGrant {
            caller: caller(Role::Admin, None, None),
            expires_at,
            revoked_at,
        };
        assert!(grant(None, None).usable_at(100).is_some());
        assert!(grant(Some(101), None).usable_at(100).is_some());
        assert!(grant(Some(100), None).usable_at(100).is_none());
        assert!(grant(None, Some(50)).usable_at(100).is_none());
        assert!(expires_in(Some(0)).is_err());
        assert_eq!(expires_in(Some(60)).unwrap(), Some(60));
    }

    #[test]
    fn whom_a_token_may_be_for() {
        let alice = UserId::from_trusted("alice@a");
        let alice = Some(&alice);
        // (role, names an instance, user, the field at fault)
        let table = [
            (Role::Admin, false, None, Ok(())),
            (Role::Admin, true, None, Ok(())),
            (Role::Admin, true, alice, Err("UserId")),
            (Role::Agent, true, alice, Ok(())),
            (Role::Agent, true, None, Err("UserId")),
            (Role::Agent, false, alice, Err("InstanceId")),
            (Role::Telephony, true, None, Ok(())),
            (Role::Telephony, false, None, Err("InstanceId")),
        ];
        for (role, names_instance, user, expected) in table {
            let got = check_subject(role, names_instance, user).map_err(|v| v.field);
            assert_eq!(got, expected, "{role} {names_instance} {user:?}");
        }
    }

    #[test]
    fn principals() {
        assert_eq!(
            caller(Role::Agent, Some("a"), Some("alice@a")).principal(),
            "alice@a"
        );
        assert_eq!(
            caller(Role::Admin, None, None).principal(),
            "operator:tok-1"
        );
        assert_eq!(
            caller(Role::Admin, Some("a"), None).principal(),
            "admin:tok-1"
        );
        assert_eq!(
            caller(Role::Telephony, Some("a"), None).principal(),
            "telephony:tok-1"
        );
    }

    #[test]
    fn an_agent_watches_only_itself_others_what_they_name() {
        let agent = caller(Role::Agent, Some("a"), Some("alice@a"));
        let alice = UserId::parse("UserId", "alice@a").unwrap();
        let bob = UserId::parse("UserId", "bob@a").unwrap();
        assert_eq!(watched_agent(&agent, None).unwrap(), Some(alice.clone()));
        assert_eq!(
            watched_agent(&agent, Some(alice.clone())).unwrap(),
            Some(alice)
        );
        let refused = watched_agent(&agent, Some(bob.clone())).unwrap_err();
        assert_eq!(refused.code(), "Permission.Common");
        for who in [
            caller(Role::Admin, Some("a"), None),
            caller(Role::Telephony, Some("a"), None),
        ] {
            assert_eq!(watched_agent(&who, None).unwrap(), None);
            assert_eq!(
                watched_agent(&who, Some(bob.clone())).unwrap(),
                Some(bob.clone())
            );
        }
    }
}
