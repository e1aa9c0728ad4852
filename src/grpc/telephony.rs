//! The Telephony service: ReportChannelEvent, how the media plane reports
//! channel progress.

use tonic::{Request, Response, Status};

use crate::app::{self, App, ReportedCall};
use crate::domain::access::{Action, authorize};
use crate::domain::conference;
use crate::domain::ids::{ChannelId, InstanceId, JobId};
use crate::domain::states::ChannelState;
use crate::error::{Error, ParamViolation};
use crate::proto::{self, telephony_server::Telephony};

use super::convert::{call_context, reported_channel_state};
use super::request::{Incoming, ok_response, optional, parse_params, text};

pub struct TelephonyService {
    app: App,
}

impl TelephonyService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

/// ReleaseInitiator or ReleaseReason: optional, bounded, and only with a
/// release (`conference::release_detail_allowed`).
fn release_detail(
    field: &'static str,
    raw: &str,
    state: Result<ChannelState, &ParamViolation>,
) -> Result<Option<String>, ParamViolation> {
    let value = optional(raw, |s| text(field, s, conference::MAX_RELEASE_TEXT_CHARS))?;
    if let (Some(_), Ok(state)) = (&value, state) {
        conference::release_detail_allowed(field, state)?;
    }
    Ok(value)
}

/// Every parameter of ReportChannelEvent, all violations at once. Pure, so
/// the fuzz target runs exactly what the handler runs.
pub fn parse_report_channel_event(
    r: &proto::ReportChannelEventRequest,
) -> Result<app::ReportChannelEvent, Error> {
    let reported = reported_channel_state("ChannelState", r.channel_state);
    let reported_ok = reported.as_ref().copied();
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        job_id = JobId::parse("JobId", &r.job_id);
        channel_id = ChannelId::parse("ChannelId", &r.channel_id);
        state = reported.clone();
        release_initiator =
            release_detail("ReleaseInitiator", &r.release_initiator, reported_ok);
        release_reason = release_detail("ReleaseReason", &r.release_reason, reported_ok);
    }
    Ok(app::ReportChannelEvent {
        instance_id,
        job_id,
        channel_id,
        state,
        release_initiator,
        release_reason,
    })
}

#[tonic::async_trait]
impl Telephony for TelephonyService {
    async fn report_channel_event(
        &self,
        request: Request<proto::ReportChannelEventRequest>,
    ) -> Result<Response<proto::ReportChannelEventResponse>, Status> {
        let call = Incoming::new("ReportChannelEvent", &self.app, &request);
        let r = request.get_ref();
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let cmd = parse_report_channel_event(r)?;
            authorize(&caller, Action::ReportChannelEvent, &cmd.instance_id)?;
            let replies = call.replies(
                &caller,
                cmd.instance_id.as_str(),
                |id, out: &ReportedCall| {
                    let data = proto::report_channel_event_response::Data {
                        call_context: Some(call_context(&out.call)),
                        context_id: out.context_id,
                    };
                    ok_response!(ReportChannelEventResponse, id, data)
                },
            )?;
            let done = self
                .app
                .report_channel_event(&call.acting(&caller), &cmd, replies.idempotent())
                .await?;
            replies.answer(done)
        })
        .await
    }
}
