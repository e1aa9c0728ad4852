//! The CallControl service: StartConference, EndConference, PollUserStatus,
//! ReadyForService.

use tonic::{Request, Response, Status};

use crate::app::{self, App};
use crate::domain::access::{Action, acting_agent, authorize};
use crate::domain::conference::{self, parse_participants};
use crate::domain::ids::{InstanceId, JobId};
use crate::domain::privacy::mask_participant;
use crate::proto::{self, call_control_server::CallControl};

use super::convert::{call_context, user_context};
use super::request::{
    acting, authenticate, ok_response, optional_user, parse_params, request_id, respond, text,
};

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
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("StartConference", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                user_id = optional_user(&r.user_id);
                participants = parse_participants(&r.participant_list_json);
                timeout_seconds = conference::timeout_seconds(r.timeout_seconds);
                tags = text("Tags", &r.tags, conference::MAX_TAGS_BYTES);
            }
            authorize(&caller, Action::StartConference, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::StartConference {
                instance_id,
                user_id,
                participants,
                timeout_seconds,
                tags,
            };
            let out = self.app.start_conference(&acting(&id, &caller), &cmd).await?;
            // Field values are computed only when DEBUG is on.
            tracing::debug!(
                job_id = %out.call.job_id,
                participants = ?cmd.participants.iter().map(|p| mask_participant(p)).collect::<Vec<_>>(),
                "conference started"
            );
            Ok(ok_response!(
                StartConferenceResponse,
                id,
                proto::start_conference_response::Data {
                    call_context: Some(call_context(&out.call)),
                    user_context: Some(user_context(&out.agent)),
                    context_id: out.context_id,
                }
            ))
        })
        .await
    }

    async fn end_conference(
        &self,
        request: Request<proto::EndConferenceRequest>,
    ) -> Result<Response<proto::EndConferenceResponse>, Status> {
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("EndConference", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                user_id = optional_user(&r.user_id);
                job_id = JobId::parse("JobId", &r.job_id);
            }
            authorize(&caller, Action::EndConference, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::EndConference {
                instance_id,
                user_id,
                job_id,
            };
            let out = self.app.end_conference(&acting(&id, &caller), &cmd).await?;
            Ok(ok_response!(
                EndConferenceResponse,
                id,
                proto::end_conference_response::Data {
                    call_context: Some(call_context(&out.call)),
                    user_context: Some(user_context(&out.agent)),
                    context_id: out.context_id,
                }
            ))
        })
        .await
    }

    async fn poll_user_status(
        &self,
        request: Request<proto::PollUserStatusRequest>,
    ) -> Result<Response<proto::PollUserStatusResponse>, Status> {
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("PollUserStatus", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                user_id = optional_user(&r.user_id);
            }
            authorize(&caller, Action::PollUserStatus, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::PollUserStatus {
                instance_id,
                user_id,
            };
            let out = self.app.poll_user_status(&cmd).await?;
            Ok(ok_response!(
                PollUserStatusResponse,
                id,
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
        let (r, id) = (request.get_ref(), request_id(request.metadata()));
        respond("ReadyForService", &id, async {
            let caller = authenticate(&self.app, request.metadata()).await?;
            parse_params! {
                instance_id = InstanceId::parse("InstanceId", &r.instance_id);
                user_id = optional_user(&r.user_id);
            }
            authorize(&caller, Action::ReadyForService, &instance_id)?;
            let user_id = acting_agent(&caller, user_id)?;
            let cmd = app::ReadyForService {
                instance_id,
                user_id,
                outbound_scenario: r.outbound_scenario,
            };
            let (agent, _context_id) = self
                .app
                .ready_for_service(&acting(&id, &caller), &cmd)
                .await?;
            Ok(ok_response!(
                ReadyForServiceResponse,
                id,
                user_context(&agent)
            ))
        })
        .await
    }
}
