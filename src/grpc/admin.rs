//! The Admin service: CreateInstance and CreateUser.

use tonic::{Request, Response, Status};

use crate::app::{self, App};
use crate::domain::agent::check_mobile;
use crate::domain::ids::{Extension, InstanceId, LoginName, PhoneNumber};
use crate::proto::{self, admin_server::Admin};

use super::convert::{user_context, work_mode};
use super::request::{context, ok_response, optional, parse_params, required_text, respond, text};

/// The actor recorded in events for provisioning.
const ACTOR: &str = "admin";

pub struct AdminService {
    app: App,
}

impl AdminService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_instance(
        &self,
        request: Request<proto::CreateInstanceRequest>,
    ) -> Result<Response<proto::CreateInstanceResponse>, Status> {
        let r = request.get_ref();
        let ctx = context(request.metadata(), ACTOR);
        respond("CreateInstance", &ctx, async {
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                name = required_text("Name", &r.name, 128);
                description = text("Description", &r.description, 1024);
            }
            let cmd = app::CreateInstance {
                instance_id,
                name,
                description,
            };
            let out = self.app.create_instance(&ctx, &cmd).await?;
            Ok(ok_response!(
                CreateInstanceResponse,
                ctx,
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
        let r = request.get_ref();
        let ctx = context(request.metadata(), ACTOR);
        respond("CreateUser", &ctx, async {
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
            let cmd = app::CreateUser {
                instance_id,
                login_name,
                display_name,
                work_mode,
                mobile,
                extension,
            };
            let out = self.app.create_user(&ctx, &cmd).await?;
            let a = &out.agent;
            Ok(ok_response!(
                CreateUserResponse,
                ctx,
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
}
