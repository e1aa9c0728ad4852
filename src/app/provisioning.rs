//! CreateInstance and CreateUser.

use serde_json::json;
use sqlx::PgConnection;

use crate::domain::agent::Agent;
use crate::domain::ids::{Extension, InstanceId, LoginName, PhoneNumber, UserId};
use crate::domain::states::WorkMode;
use crate::error::Error;
use crate::store::changes::{Event, JsonText};
use crate::store::provisioning::{self, Instance, Profile};

use super::unit::Atomicity;
use super::{App, Done, Idempotent, RequestContext, instance_row, now, shared};

#[derive(Debug, Clone)]
pub struct CreateInstance {
    pub instance_id: InstanceId,
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct CreateUser {
    pub instance_id: InstanceId,
    pub login_name: LoginName,
    pub display_name: String,
    pub work_mode: WorkMode,
    pub mobile: Option<PhoneNumber>,
    pub extension: Option<Extension>,
}

/// A new agent as provisioned.
#[derive(Debug, Clone)]
pub struct CreatedUser {
    pub agent: Agent,
    pub profile: Profile,
}

impl App {
    pub async fn create_instance(
        &self,
        ctx: &RequestContext,
        cmd: &CreateInstance,
        idempotent: Option<Idempotent<Instance>>,
    ) -> Result<Done<Instance>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "CreateInstance",
            None,
            ctx.deadline,
            Atomicity::Transaction,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_create_instance(conn, &job.0, &job.1).await })
            },
        )
        .await
    }

    pub async fn create_user(
        &self,
        ctx: &RequestContext,
        cmd: &CreateUser,
        idempotent: Option<Idempotent<CreatedUser>>,
    ) -> Result<Done<CreatedUser>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "CreateUser",
            Some(instance_row(&cmd.instance_id)),
            ctx.deadline,
            Atomicity::Transaction,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_create_user(conn, &job.0, &job.1).await })
            },
        )
        .await
    }
}

async fn try_create_instance(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &CreateInstance,
) -> Result<Instance, Error> {
    let instance = Instance {
        instance_id: cmd.instance_id.clone(),
        name: cmd.name.clone(),
        description: cmd.description.clone(),
        created_at: now(),
    };
    let event = Event {
        request_id: &ctx.request_id,
        action: "CreateInstance",
        actor: &ctx.actor,
        before: None,
        after: JsonText::of(&json!({ "instance": instance }))?,
    };
    provisioning::create_instance(conn, &instance, &event).await?;
    Ok(instance)
}

/// Runs at READ COMMITTED under the instance's lock, so the lowest free
/// extension is chosen among every agent committed before.
async fn try_create_user(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &CreateUser,
) -> Result<CreatedUser, Error> {
    if !provisioning::lock_instance(conn, &cmd.instance_id).await? {
        return Err(Error::InstanceNotFound(cmd.instance_id.to_string()));
    }
    let extension = match &cmd.extension {
        Some(e) => e.clone(),
        None => provisioning::lowest_free_extension(conn, &cmd.instance_id).await?,
    };
    let user_id = UserId::of(&cmd.login_name, &cmd.instance_id);
    let agent = Agent::provisioned(user_id, cmd.instance_id.clone(), extension, cmd.work_mode);
    let profile = Profile {
        login_name: cmd.login_name.clone(),
        display_name: cmd.display_name.clone(),
        mobile: cmd.mobile.clone(),
    };
    // The mobile number stays out of the event log.
    let event = Event {
        request_id: &ctx.request_id,
        action: "CreateUser",
        actor: &ctx.actor,
        before: None,
        after: JsonText::of(&json!({
            "agents": [agent],
            "login_name": profile.login_name,
            "display_name": profile.display_name,
        }))?,
    };
    provisioning::insert_agent(conn, &agent, &profile, &event).await?;
    Ok(CreatedUser { agent, profile })
}
