//! The CallControl service: StartConference, EndConference, PollUserStatus,
//! ReadyForService.

use tonic::{Request, Response, Status};

use crate::app::{self, App, CallAndAgent};
use crate::domain::Agent;
use crate::domain::access::{Action, acting_agent, authorize};
use crate::domain::conference::{self, parse_participants};
use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::privacy::mask_participant;
use crate::error::Error;
use crate::proto::{self, call_control_server::CallControl};

use super::convert::{call_context, user_context};
use super::request::{Incoming, ok_response, optional_user, parse_params, text};

/// StartConference's parameters, checked. `user_id` is `None` when blank:
/// who acts is decided with the token (`access::acting_agent`).
#[derive(Debug)]
pub struct StartConferenceParams {
    pub instance_id: InstanceId,
    pub user_id: Option<UserId>,
    pub participants: Vec<String>,
    pub timeout_seconds: i32,
    pub tags: String,
}

/// Every parameter of StartConference, all violations at once. Pure, so
/// the fuzz target runs exactly what the handler runs.
pub fn parse_start_conference(
    r: &proto::StartConferenceRequest,
) -> Result<StartConferenceParams, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        user_id = optional_user(&r.user_id);
        participants = parse_participants(&r.participant_list_json);
        timeout_seconds = conference::timeout_seconds(r.timeout_seconds);
        tags = text("Tags", &r.tags, conference::MAX_TAGS_CHARS);
    }
    Ok(StartConferenceParams {
        instance_id,
        user_id,
        participants,
        timeout_seconds,
        tags,
    })
}

/// EndConference's parameters, checked.
#[derive(Debug)]
pub struct EndConferenceParams {
    pub instance_id: InstanceId,
    pub user_id: Option<UserId>,
    pub job_id: JobId,
}

pub fn parse_end_conference(r: &proto::EndConferenceRequest) -> Result<EndConferenceParams, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        user_id = optional_user(&r.user_id);
        job_id = JobId::parse("JobId", &r.job_id);
    }
    Ok(EndConferenceParams {
        instance_id,
        user_id,
        job_id,
    })
}

/// The parameters of PollUserStatus and ReadyForService, checked: whose
/// status, where.
#[derive(Debug)]
pub struct AgentParams {
    pub instance_id: InstanceId,
    pub user_id: Option<UserId>,
}

fn parse_agent(instance_id: &str, user_id: &str) -> Result<AgentParams, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", instance_id);
        user_id = optional_user(user_id);
    }
    Ok(AgentParams {
        instance_id,
        user_id,
    })
}

pub fn parse_poll_user_status(r: &proto::PollUserStatusRequest) -> Result<AgentParams, Error> {
    parse_agent(&r.instance_id, &r.user_id)
}

/// OutboundScenario is a plain flag: nothing to check.
pub fn parse_ready_for_service(r: &proto::ReadyForServiceRequest) -> Result<AgentParams, Error> {
    parse_agent(&r.instance_id, &r.user_id)
}

pub struct CallControlService {
    app: App,
}

impl CallControlService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl CallControl for CallControlService {
    async fn start_conference(
        &self,
        request: Request<proto::StartConferenceRequest>,
    ) -> Result<Response<proto::StartConferenceResponse>, Status> {
        let call = Incoming::new("StartConference", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let StartConferenceParams {
                instance_id,
                user_id,
                participants,
                timeout_seconds,
                tags,
            } = parse_start_conference(r)?;
            authorize(&caller, Action::StartConference, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::StartConference {
                instance_id,
                user_id,
                participants,
                timeout_seconds,
                tags,
            };
            let replies = call.replies(&caller, cmd.instance_id.as_str(), start_conference_reply,
            )?;
            let done = self
                .app
                .start_conference(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            let reply = replies.answer(done)?;
            // Field values are computed only when DEBUG is on.
            tracing::debug!(
                job_id = ?reply.data.as_ref().and_then(|d| d.call_context.as_ref()).map(|c| &c.job_id),
                participants = ?cmd.participants.iter().map(|p| mask_participant(p)).collect::<Vec<_>>(),
                "conference started"
            );
            Ok(reply)
        })
        .await
    }

    async fn end_conference(
        &self,
        request: Request<proto::EndConferenceRequest>,
    ) -> Result<Response<proto::EndConferenceResponse>, Status> {
        let call = Incoming::new("EndConference", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let EndConferenceParams {
                instance_id,
                user_id,
                job_id,
            } = parse_end_conference(r)?;
            authorize(&caller, Action::EndConference, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::EndConference {
                instance_id,
                user_id,
                job_id,
            };
            let replies = call.replies(&caller, cmd.instance_id.as_str(), end_conference_reply)?;
            let done = self
                .app
                .end_conference(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            replies.answer(done)
        })
        .await
    }

    async fn poll_user_status(
        &self,
        request: Request<proto::PollUserStatusRequest>,
    ) -> Result<Response<proto::PollUserStatusResponse>, Status> {
        let call = Incoming::new("PollUserStatus", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let AgentParams {
                instance_id,
                user_id,
            } = parse_poll_user_status(r)?;
            authorize(&caller, Action::PollUserStatus, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::PollUserStatus {
                instance_id,
                user_id,
            };
            let out = self
                .app
                .poll_user_status(&call.acting(&caller), &cmd)
                .await?;
            Ok(ok_response!(
                PollUserStatusResponse,
                call.id(),
                proto::poll_user_status_response::Data {
                    call_context: out.call.as_ref().map(call_context),
                    user_context: Some(user_context(&out.agent)),
                    context_id: out.context_id,
                }
            ))
        })
        .await
    }

    async fn ready_for_service(
        &self,
        request: Request<proto::ReadyForServiceRequest>,
    ) -> Result<Response<proto::ReadyForServiceResponse>, Status> {
        let call = Incoming::new("ReadyForService", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let AgentParams {
                instance_id,
                user_id,
            } = parse_ready_for_service(r)?;
            authorize(&caller, Action::ReadyForService, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::ReadyForService {
                instance_id,
                user_id,
                outbound_scenario: r.outbound_scenario,
            };
            let replies = call.replies(
                &caller,
                cmd.instance_id.as_str(),
                |id, (agent, _context_id): &(Agent, i64)| {
                    ok_response!(ReadyForServiceResponse, id, user_context(agent))
                },
            )?;
            let done = self
                .app
                .ready_for_service(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            replies.answer(done)
        })
        .await
    }
}

fn start_conference_reply(id: &str, out: &CallAndAgent) -> proto::StartConferenceResponse {
    ok_response!(
        StartConferenceResponse,
        id,
        proto::start_conference_response::Data {
            call_context: Some(call_context(&out.call)),
            user_context: Some(user_context(&out.agent)),
            context_id: out.context_id,
        }
    )
}

fn end_conference_reply(id: &str, out: &CallAndAgent) -> proto::EndConferenceResponse {
    ok_response!(
        EndConferenceResponse,
        id,
        proto::end_conference_response::Data {
            call_context: Some(call_context(&out.call)),
            user_context: Some(user_context(&out.agent)),
            context_id: out.context_id,
        }
    )
}
