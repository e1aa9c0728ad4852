//! The JSON a grpcurl user sees: the documented PascalCase keys and enum
//! strings. Responses are transcoded with the service's own descriptors.

use ccc_callcontrol::proto::{self, FILE_DESCRIPTOR_SET};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

fn to_json<M: Message>(message: &M, name: &str) -> Value {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let descriptor = pool.get_message_by_name(name).unwrap();
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).unwrap();
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    keys
}

#[sqlx::test]
async fn end_conference_speaks_the_documented_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", CUSTOMER])
        .await;
    let response = app
        .calls
        .clone()
        .end_conference(proto::EndConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: agents[0].0.clone(),
            job_id: conf.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let json = to_json(&response, "ccc.v20200701.EndConferenceResponse");

    assert_eq!(
        keys(&json),
        [
            "Code",
            "Data",
            "HttpStatusCode",
            "Message",
            "Params",
            "RequestId"
        ]
    );
    assert_eq!(json["Code"], "OK");
    assert_eq!(json["HttpStatusCode"], 200);
    let data = &json["Data"];
    assert_eq!(keys(data), ["CallContext", "ContextId", "UserContext"]);
    let call = &data["CallContext"];
    assert_eq!(
        keys(call),
        ["CallType", "ChannelContexts", "InstanceId", "JobId"]
    );
    assert_eq!(call["CallType"], "CONFERENCE");
    let channel = &call["ChannelContexts"][0];
    assert_eq!(
        keys(channel),
        [
            "CallType",
            "ChannelId",
            "ChannelState",
            "Destination",
            "Index",
            "JobId",
            "Originator",
            "ReleaseInitiator",
            "ReleaseReason",
            "Timestamp",
            "UserExtension",
            "UserId",
        ]
    );
    assert_eq!(channel["ChannelState"], "RELEASED");
    assert_eq!(channel["ReleaseReason"], "200 - Left conference");
    assert_eq!(channel["Index"], 1);
    assert_eq!(call["ChannelContexts"][2]["ChannelState"], "ANSWERED");
    let user = &data["UserContext"];
    assert_eq!(
        keys(user),
        [
            "BreakCode",
            "DeviceId",
            "DeviceState",
            "Extension",
            "InstanceId",
            "JobId",
            "OutboundScenario",
            "SignedSkillGroupIdList",
            "UserId",
            "UserState",
            "WorkMode",
        ]
    );
    assert_eq!(user["UserState"], "WORKING");
    assert_eq!(user["WorkMode"], "ON_SITE");
    assert_eq!(user["DeviceState"], "UNREGISTERED");
}
