//! The Admin service: CreateInstance, CreateUser, CreateAccessToken and
//! RevokeAccessToken.

use tonic::{Request, Response, Status};

use crate::app::{self, App};
use crate::domain::access::{self, Action, Role, authorize};
use crate::domain::agent::check_mobile;
use crate::domain::ids::{Extension, InstanceId, LoginName, PhoneNumber, UserId};
use crate::error::ParamViolation;
use crate::proto::{self, admin_server::Admin};

use super::convert::{role, token_info, user_context, work_mode};
use super::request::{
    acting, authenticate, ok_response, optional, parse_params, request_id, required_text, respond,
    text,
};

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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_instance(
        &self,
        request: Request<proto::CreateInstanceRequest>,
    ) -> Result<Response<proto::CreateInstanceResponse>, Status> {
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("CreateInstance", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                name = required_text("Name", &r.name, 128);
                description = text("Description", &r.description, 1024);
            }
            authorize(&caller, Action::CreateInstance, &instance_id)?;
            let cmd = app::CreateInstance {
                instance_id,
                name,
                description,
            };
            let out = self
                .app
                .create_instance(&acting(&id, &caller), &cmd)
                .await?;
            Ok(ok_response!(
                CreateInstanceResponse,
                id,
                proto::Instance {
                    instance_id: out.instance_id.to_string(),
                    name: out.name,
                    description: out.description,
                    create_time: out.created_at,
                }
            ))
        })
        .await
    }

    async fn create_user(
        &self,
        request: Request<proto::CreateUserRequest>,
    ) -> Result<Response<proto::CreateUserResponse>, Status> {
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("CreateUser", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
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
            authorize(&caller, Action::CreateUser, &instance_id)?;
            let cmd = app::CreateUser {
                instance_id,
                login_name,
                display_name,
                work_mode,
                mobile,
                extension,
            };
            let out = self.app.create_user(&acting(&id, &caller), &cmd).await?;
            let a = &out.agent;
            Ok(ok_response!(
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
            ))
        })
        .await
    }

    async fn create_access_token(
        &self,
        request: Request<proto::CreateAccessTokenRequest>,
    ) -> Result<Response<proto::CreateAccessTokenResponse>, Status> {
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("CreateAccessToken", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            let wanted = role("Role", r.role);
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                role = wanted.clone();
                user_id = token_user(&r.user_id, wanted.as_ref().copied());
                expires_in_seconds = access::expires_in(r.expires_in_seconds);
            }
            authorize(&caller, Action::CreateAccessToken, &instance_id)?;
            let cmd = app::CreateAccessToken {
                instance_id: Some(instance_id),
                role,
                user_id,
                expires_in_seconds,
            };
            let out = self
                .app
                .create_access_token(&acting(&id, &caller), &cmd)
                .await?;
            let t = token_info(&out.record);
            Ok(ok_response!(
                CreateAccessTokenResponse,
                id,
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
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("RevokeAccessToken", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                token_id = access::parse_token_id("TokenId", &r.token_id);
            }
            authorize(&caller, Action::RevokeAccessToken, &instance_id)?;
            let revoked = self
                .app
                .revoke_access_token(&acting(&id, &caller), Some(&instance_id), &token_id)
                .await?;
            Ok(ok_response!(
                RevokeAccessTokenResponse,
                id,
                token_info(&revoked)
            ))
        })
        .await
    }
}
