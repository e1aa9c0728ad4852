//! The Admin service: CreateInstance, CreateUser, CreateAccessToken and
//! RevokeAccessToken.

use tonic::{Request, Response, Status};

use crate::app::{self, App, CreatedUser};
use crate::domain::access::{self, Action, Role, authorize};
use crate::domain::agent::check_mobile;
use crate::domain::ids::{Extension, InstanceId, LoginName, PhoneNumber, UserId};
use crate::error::{Error, ParamViolation};
use crate::proto::{self, admin_server::Admin};
use crate::store::provisioning::Instance;
use crate::store::tokens::TokenRecord;

use super::convert::{role, token_info, user_context, work_mode};
use super::idempotency::IDEMPOTENCY_HEADER;
use super::request::{Incoming, ok_response, optional, parse_params, required_text, text};

pub struct AdminService {
    app: App,
}

impl AdminService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

/// The UserId of CreateAccessToken: whether it must be given depends on
/// the role (`access::check_subject`).
fn token_user(
    raw: &str,
    role: Result<Role, &ParamViolation>,
) -> Result<Option<UserId>, ParamViolation> {
    let user = optional(raw, |s| UserId::parse("UserId", s))?;
    if let Ok(role) = role {
        // InstanceId is required here, and checked on its own.
        access::check_subject(role, true, user.as_ref())?;
    }
    Ok(user)
}

/// Every parameter of CreateInstance, all violations at once. Pure, so the
/// fuzz target runs exactly what the handler runs (as do the other
/// `parse_*` below).
pub fn parse_create_instance(
    r: &proto::CreateInstanceRequest,
) -> Result<app::CreateInstance, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        name = required_text("Name", &r.name, 128);
        description = text("Description", &r.description, 1024);
    }
    Ok(app::CreateInstance {
        instance_id,
        name,
        description,
    })
}

pub fn parse_create_user(r: &proto::CreateUserRequest) -> Result<app::CreateUser, Error> {
    let mobile = optional(&r.mobile, |s| PhoneNumber::parse("Mobile", s));
    let mode = work_mode("WorkMode", r.work_mode);
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        login_name = LoginName::parse("LoginName", &r.login_name);
        display_name = required_text("DisplayName", &r.display_name, 128);
        work_mode = mode.clone();
        mobile = match (&mobile, &mode) {
            (Ok(m), Ok(w)) => check_mobile(*w, m.as_ref()).map(|()| m.clone()),
            _ => mobile.clone(),
        };
        extension = optional(&r.extension, |s| Extension::parse("Extension", s));
    }
    Ok(app::CreateUser {
        instance_id,
        login_name,
        display_name,
        work_mode,
        mobile,
        extension,
    })
}

/// CreateAccessToken's parameters, checked. Through the API a token always
/// names its instance (operator tokens come from the command line only).
#[derive(Debug)]
pub struct CreateAccessTokenParams {
    pub instance_id: InstanceId,
    pub role: Role,
    pub user_id: Option<UserId>,
    pub expires_in_seconds: Option<i64>,
}

pub fn parse_create_access_token(
    r: &proto::CreateAccessTokenRequest,
) -> Result<CreateAccessTokenParams, Error> {
    let wanted = role("Role", r.role);
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        role = wanted.clone();
        user_id = token_user(&r.user_id, wanted.as_ref().copied());
        expires_in_seconds = access::expires_in(r.expires_in_seconds);
    }
    Ok(CreateAccessTokenParams {
        instance_id,
        role,
        user_id,
        expires_in_seconds,
    })
}

/// RevokeAccessToken's parameters, checked: which token, in which instance.
#[derive(Debug)]
pub struct RevokeAccessTokenParams {
    pub instance_id: InstanceId,
    pub token_id: String,
}

pub fn parse_revoke_access_token(
    r: &proto::RevokeAccessTokenRequest,
) -> Result<RevokeAccessTokenParams, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        token_id = access::parse_token_id("TokenId", &r.token_id);
    }
    Ok(RevokeAccessTokenParams {
        instance_id,
        token_id,
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_instance(
        &self,
        request: Request<proto::CreateInstanceRequest>,
    ) -> Result<Response<proto::CreateInstanceResponse>, Status> {
        let call = Incoming::new("CreateInstance", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let cmd = parse_create_instance(r)?;
            authorize(&caller, Action::CreateInstance, &cmd.instance_id)?;
            let replies =
                call.replies(&caller, cmd.instance_id.as_str(), |id, out: &Instance| {
                    ok_response!(
                        CreateInstanceResponse,
                        id,
                        proto::Instance {
                            instance_id: out.instance_id.to_string(),
                            name: out.name.clone(),
                            description: out.description.clone(),
                            create_time: out.created_at,
                        }
                    )
                })?;
            let done = self
                .app
                .create_instance(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            replies.answer(done)
        })
        .await
    }

    async fn create_user(
        &self,
        request: Request<proto::CreateUserRequest>,
    ) -> Result<Response<proto::CreateUserResponse>, Status> {
        let call = Incoming::new("CreateUser", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let cmd = parse_create_user(r)?;
            authorize(&caller, Action::CreateUser, &cmd.instance_id)?;
            let replies = call.replies(&caller, cmd.instance_id.as_str(), create_user_reply)?;
            let done = self
                .app
                .create_user(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            replies.answer(done)
        })
        .await
    }

    async fn create_access_token(
        &self,
        request: Request<proto::CreateAccessTokenRequest>,
    ) -> Result<Response<proto::CreateAccessTokenResponse>, Status> {
        let call = Incoming::new("CreateAccessToken", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let CreateAccessTokenParams {
                instance_id,
                role,
                user_id,
                expires_in_seconds,
            } = parse_create_access_token(r)?;
            authorize(&caller, Action::CreateAccessToken, &instance_id)?;
            if request.metadata().contains_key(IDEMPOTENCY_HEADER) {
                // Its response carries the secret, which is never stored.
                return Err(Error::invalid(
                    IDEMPOTENCY_HEADER,
                    "CreateAccessToken takes no idempotency key; retry without one and revoke a token you did not receive",
                ));
            }
            let cmd = app::CreateAccessToken {
                instance_id: Some(instance_id),
                role,
                user_id,
                expires_in_seconds,
            };
            let out = self
                .app
                .create_access_token(&call.acting(&caller), &cmd)
                .await?;
            let t = token_info(&out.record);
            Ok(ok_response!(
                CreateAccessTokenResponse,
                call.id(),
                proto::create_access_token_response::Data {
                    token_id: t.token_id,
                    token: out.token.reveal().to_owned(),
                    role: t.role,
                    instance_id: t.instance_id,
                    user_id: t.user_id,
                    expires_at: t.expires_at,
                }
            ))
        })
        .await
    }

    async fn revoke_access_token(
        &self,
        request: Request<proto::RevokeAccessTokenRequest>,
    ) -> Result<Response<proto::RevokeAccessTokenResponse>, Status> {
        let call = Incoming::new("RevokeAccessToken", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let RevokeAccessTokenParams {
                instance_id,
                token_id,
            } = parse_revoke_access_token(r)?;
            authorize(&caller, Action::RevokeAccessToken, &instance_id)?;
            let replies = call.replies(
                &caller,
                instance_id.as_str(),
                |id, revoked: &TokenRecord| {
                    ok_response!(RevokeAccessTokenResponse, id, token_info(revoked))
                },
            )?;
            let done = self
                .app
                .revoke_access_token(
                    &call.acting(&caller),
                    Some(&instance_id),
                    &token_id,
                    replies.idempotent(),
                )
                .await?;
            replies.answer(done)
        })
        .await
    }
}

fn create_user_reply(id: &str, out: &CreatedUser) -> proto::CreateUserResponse {
    let a = &out.agent;
    ok_response!(
        CreateUserResponse,
        id,
        proto::User {
            user_id: a.user_id.to_string(),
            instance_id: a.instance_id.to_string(),
            login_name: out.profile.login_name.to_string(),
            display_name: out.profile.display_name.clone(),
            extension: a.extension.to_string(),
            work_mode: user_context(a).work_mode,
            mobile: out
                .profile
                .mobile
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            user_context: Some(user_context(a)),
        }
    )
}
