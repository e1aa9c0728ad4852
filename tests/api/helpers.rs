//! The test harness: the real server on an ephemeral port over the test's
//! own freshly migrated database, real tonic clients, and builders for the
//! usual set-up (an instance, agents, a conference).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ccc_callcontrol::app::{App, CreateAccessToken, RequestContext, TokenCache};
use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::domain::ids::{InstanceId, UserId};
use ccc_callcontrol::proto::{
    self, admin_client::AdminClient, call_control_client::CallControlClient,
    channel_context::ChannelState, events_client::EventsClient, telephony_client::TelephonyClient,
};
use ccc_callcontrol::startup::{Application, ServeOptions, connect_pool};
use ccc_callcontrol::store::Store;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub const INSTANCE: &str = "ccc-test";
pub const CUSTOMER: &str = "13900001234";

/// Where the whole suite's logs go, for the privacy check that runs after
/// it (`tests/log_privacy.rs`), and where every token the suite creates is
/// written so that check can look for them.
pub const LOG_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/api-suite.log");
pub const SECRETS_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/api-suite-secrets.txt");

/// Sends `authorization: Bearer <token>` with every request (or nothing).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn token(token: &str) -> Self {
        Self(Some(format!("Bearer {token}").parse().unwrap()))
    }

    pub fn raw(header: &str) -> Self {
        Self(Some(header.parse().unwrap()))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Calls = CallControlClient<InterceptedService<Channel, Bearer>>;
pub type Telephony = TelephonyClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;
pub type Events = EventsClient<InterceptedService<Channel, Bearer>>;

/// A client of each service, all sending one token.
#[derive(Clone)]
pub struct Clients {
    pub calls: Calls,
    pub telephony: Telephony,
    pub admin: Admin,
    pub events: Events,
}

impl Clients {
    pub fn new(channel: Channel, bearer: Bearer) -> Self {
        Self {
            calls: CallControlClient::with_interceptor(channel.clone(), bearer.clone()),
            telephony: TelephonyClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventsClient::with_interceptor(channel, bearer),
        }
    }
}

pub struct TestApp {
    pub pool: PgPool,
    /// The server's own pool (see [`service_pool`]).
    pub served: PgPool,
    pub channel: Channel,
    /// The actions, for creating tokens directly (as the CLI does).
    pub direct: App,
    /// Clients with an operator token.
    pub calls: Calls,
    pub telephony: Telephony,
    pub admin: Admin,
    pub events: Events,
    /// Dropped or sent: the server shuts down.
    stop: Option<oneshot::Sender<()>>,
}

/// Starts the application on 127.0.0.1:0 over `pool` and connects clients
/// holding an operator token.
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            ..ServeOptions::default()
        },
    )
    .await
}

/// Starts the application over its own pool on `pool`'s database, built
/// as the service builds it (session timeouts, lock and statement limits),
/// with `pool`'s size and acquire timeout ([`service_args`]). `pool` stays
/// the test's own, for set-up and for checking what was stored.
pub async fn spawn_app_with(pool: PgPool, options: ServeOptions) -> TestApp {
    let args = service_args(&pool);
    spawn_app_tuned(pool, options, args).await
}

/// [`spawn_app_with`], with the server's pool built from `args`.
pub async fn spawn_app_tuned(pool: PgPool, options: ServeOptions, args: DatabaseArgs) -> TestApp {
    init_logs();
    let served = connect_pool((*pool.connect_options()).clone(), &args)
        .await
        .expect("service pool");
    let app = Application::bind("127.0.0.1:0".parse().unwrap(), served.clone(), options)
        .await
        .expect("bind");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let direct = App::new(Store::new(pool.clone()), TokenCache::new(Duration::ZERO));
    let operator = create_token(&direct, None, Role::Admin, None, None).await;
    let clients = Clients::new(channel.clone(), Bearer::token(&operator));
    TestApp {
        pool,
        served,
        channel,
        direct,
        calls: clients.calls,
        telephony: clients.telephony,
        admin: clients.admin,
        events: clients.events,
        stop: Some(stop),
    }
}

/// The service's database settings, with `pool`'s size and acquire
/// timeout (the URL is unused: the server connects as `pool` does).
pub fn service_args(pool: &PgPool) -> DatabaseArgs {
    let mut args = DatabaseArgs::for_url("");
    args.max_connections = pool.options().get_max_connections();
    args.acquire_timeout_ms = pool.options().get_acquire_timeout().as_millis() as u64;
    args
}

/// Creates a token straight in the store, records it for the privacy check
/// and returns the secret.
pub async fn create_token(
    app: &App,
    instance: Option<&str>,
    role: Role,
    user: Option<&str>,
    expires_in_seconds: Option<i64>,
) -> String {
    let ctx = RequestContext::local("test", "test");
    let cmd = CreateAccessToken {
        instance_id: instance.map(InstanceId::from_trusted),
        role,
        user_id: user.map(UserId::from_trusted),
        expires_in_seconds,
    };
    let created = app
        .create_access_token(&ctx, &cmd)
        .await
        .expect("create token");
    let secret = created.token.reveal().to_owned();
    remember_secret(&secret);
    secret
}

pub fn remember_secret(secret: &str) {
    static SECRETS: OnceLock<Mutex<File>> = OnceLock::new();
    let file =
        SECRETS.get_or_init(|| Mutex::new(File::create(SECRETS_FILE).expect("secrets file")));
    writeln!(file.lock().unwrap(), "{secret}").unwrap();
}

/// Sends every log line of the suite, at DEBUG for every crate, to
/// [`LOG_FILE`] (created anew by each run of the suite).
pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(LOG_FILE)
            .expect("log file");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    });
}

impl TestApp {
    /// Starts the server's shutdown (what SIGTERM does in the binary).
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Clients that send `bearer`.
    pub fn clients(&self, bearer: Bearer) -> Clients {
        Clients::new(self.channel.clone(), bearer)
    }

    /// A token of `role` for `instance` (and `user`), and clients using it.
    pub async fn clients_as(
        &self,
        instance: Option<&str>,
        role: Role,
        user: Option<&str>,
    ) -> Clients {
        let token = create_token(&self.direct, instance, role, user, None).await;
        self.clients(Bearer::token(&token))
    }
}

/// A conference as StartConference returned it.
#[derive(Debug, Clone)]
pub struct Conference {
    pub job_id: String,
    pub channels: Vec<proto::ChannelContext>,
}

impl Conference {
    /// The channel that reaches `destination` (an extension or a number).
    pub fn channel_to(&self, destination: &str) -> String {
        self.channels
            .iter()
            .find(|c| c.destination == destination)
            .unwrap_or_else(|| panic!("no channel to {destination}"))
            .channel_id
            .clone()
    }
}

impl TestApp {
    pub async fn create_instance(&self, id: &str) {
        self.admin
            .clone()
            .create_instance(proto::CreateInstanceRequest {
                instance_id: id.into(),
                name: format!("{id} instance"),
                description: String::new(),
            })
            .await
            .expect("CreateInstance");
    }

    /// Creates agent `login` in `instance`; returns its UserId and extension.
    pub async fn create_agent(&self, instance: &str, login: &str) -> (String, String) {
        let user = self
            .admin
            .clone()
            .create_user(proto::CreateUserRequest {
                instance_id: instance.into(),
                login_name: login.into(),
                display_name: login.to_uppercase(),
                work_mode: proto::WorkMode::OnSite as i32,
                mobile: String::new(),
                extension: String::new(),
            })
            .await
            .expect("CreateUser")
            .into_inner()
            .data
            .unwrap();
        (user.user_id, user.extension)
    }

    /// An instance with READY agents `logins`; returns (UserId, extension)s.
    pub async fn ready_agents(&self, logins: &[&str]) -> Vec<(String, String)> {
        self.create_instance(INSTANCE).await;
        let mut agents = Vec::new();
        for login in logins {
            let agent = self.create_agent(INSTANCE, login).await;
            self.ready(&agent.0).await.expect("ReadyForService");
            agents.push(agent);
        }
        agents
    }

    pub async fn ready(&self, user: &str) -> Result<proto::UserContext, Status> {
        let r = self
            .calls
            .clone()
            .ready_for_service(proto::ReadyForServiceRequest {
                instance_id: INSTANCE.into(),
                user_id: user.into(),
                outbound_scenario: false,
            })
            .await?;
        Ok(r.into_inner().data.unwrap())
    }

    pub async fn start(
        &self,
        user: &str,
        participants: &[&str],
    ) -> Result<proto::start_conference_response::Data, Status> {
        let r = self
            .calls
            .clone()
            .start_conference(proto::StartConferenceRequest {
                instance_id: INSTANCE.into(),
                user_id: user.into(),
                participant_list_json: serde_json::to_string(participants).unwrap(),
                timeout_seconds: None,
                tags: String::new(),
            })
            .await?;
        Ok(r.into_inner().data.unwrap())
    }

    /// Starts a conference by `user` with `participants`, every channel
    /// answered.
    pub async fn answered_conference(&self, user: &str, participants: &[&str]) -> Conference {
        let data = self
            .start(user, participants)
            .await
            .expect("StartConference");
        let call = data.call_context.unwrap();
        let conference = Conference {
            job_id: call.job_id.clone(),
            channels: call.channel_contexts,
        };
        for p in participants {
            self.report(
                &conference.job_id,
                &conference.channel_to(p),
                ChannelState::Answered,
            )
            .await
            .expect("ReportChannelEvent ANSWERED");
        }
        conference
    }

    pub async fn report(
        &self,
        job: &str,
        channel: &str,
        state: ChannelState,
    ) -> Result<proto::report_channel_event_response::Data, Status> {
        self.report_release(job, channel, state, "", "").await
    }

    pub async fn report_release(
        &self,
        job: &str,
        channel: &str,
        state: ChannelState,
        initiator: &str,
        reason: &str,
    ) -> Result<proto::report_channel_event_response::Data, Status> {
        let r = self
            .telephony
            .clone()
            .report_channel_event(proto::ReportChannelEventRequest {
                instance_id: INSTANCE.into(),
                job_id: job.into(),
                channel_id: channel.into(),
                channel_state: state as i32,
                release_initiator: initiator.into(),
                release_reason: reason.into(),
            })
            .await?;
        Ok(r.into_inner().data.unwrap())
    }

    /// Has this replica find a call it knows stale, so that it expects
    /// stale calls for its next writes (`app::known::KnownCalls::expect_stale`):
    /// `lead` (made ready) starts a call with `mate` here, `mate` leaves it
    /// through `other`, then `lead`'s leaving here is decided on the call
    /// with `mate` on it. Call it last before the action it is for: writes
    /// on known calls found as known weigh the other way.
    pub async fn find_a_known_call_stale(
        &self,
        other: &TestApp,
        lead: &(String, String),
        mate: &(String, String),
    ) {
        self.ready(&lead.0).await.unwrap();
        self.ready(&mate.0).await.unwrap();
        let conf = self.answered_conference(&lead.0, &[mate.1.as_str()]).await;
        other.end(&mate.0, &conf.job_id).await.unwrap();
        self.end(&lead.0, &conf.job_id).await.unwrap();
    }

    pub async fn end(
        &self,
        user: &str,
        job: &str,
    ) -> Result<proto::end_conference_response::Data, Status> {
        self.end_in(INSTANCE, user, job).await
    }

    pub async fn end_in(
        &self,
        instance: &str,
        user: &str,
        job: &str,
    ) -> Result<proto::end_conference_response::Data, Status> {
        end_with(&self.calls, instance, user, job).await
    }

    /// Takes `user` through a call with a customer, so it ends WORKING: a
    /// state ReadyForService changes (it leaves a READY agent as it is).
    pub async fn make_working(&self, user: &str) {
        let started = self.start(user, &[CUSTOMER]).await.expect("a call");
        let job = started.call_context.unwrap().job_id;
        self.end(user, &job).await.expect("leaving it");
        assert_eq!(self.stored_agent(user).await.0, "WORKING");
    }

    /// Clients holding `user`'s own AGENT token in the test instance.
    pub async fn agent(&self, user: &str) -> Clients {
        self.clients_as(Some(INSTANCE), Role::Agent, Some(user))
            .await
    }
}

/// EndConference through `calls`, checking the success envelope.
pub async fn end_with(
    calls: &Calls,
    instance: &str,
    user: &str,
    job: &str,
) -> Result<proto::end_conference_response::Data, Status> {
    {
        let r = calls
            .clone()
            .end_conference(proto::EndConferenceRequest {
                instance_id: instance.into(),
                user_id: user.into(),
                job_id: job.into(),
            })
            .await?;
        let r = r.into_inner();
        assert_eq!((r.code.as_str(), r.http_status_code), ("OK", 200));
        assert!(!r.request_id.is_empty());
        Ok(r.data.unwrap())
    }
}

impl TestApp {
    pub async fn poll(&self, user: &str) -> proto::poll_user_status_response::Data {
        self.calls
            .clone()
            .poll_user_status(proto::PollUserStatusRequest {
                instance_id: INSTANCE.into(),
                user_id: user.into(),
            })
            .await
            .expect("PollUserStatus")
            .into_inner()
            .data
            .unwrap()
    }

    /// Rows of the event table for `job`, as (action, actor).
    pub async fn events_of(&self, job: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT action, actor FROM events WHERE instance_id = $1 AND job_id = $2 ORDER BY event_id",
        )
        .bind(INSTANCE)
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stored channel rows of `job`: (destination, state, initiator, reason).
    pub async fn stored_channels(&self, job: &str) -> Vec<(String, String, String, String)> {
        sqlx::query_as(
            "SELECT destination, channel_state, release_initiator, release_reason
             FROM channels WHERE instance_id = $1 AND job_id = $2 ORDER BY idx",
        )
        .bind(INSTANCE)
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Stored (user_state, job_id) of an agent.
    pub async fn stored_agent(&self, user: &str) -> (String, Option<String>) {
        sqlx::query_as(
            "SELECT user_state, job_id FROM agents WHERE instance_id = $1 AND user_id = $2",
        )
        .bind(INSTANCE)
        .bind(user)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn call_ended_at(&self, job: &str) -> Option<i64> {
        sqlx::query_scalar("SELECT ended_at FROM calls WHERE instance_id = $1 AND job_id = $2")
            .bind(INSTANCE)
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Asserts that `status` is the documented error: gRPC code, contact-center
/// code in ErrorInfo, HttpStatusCode and a RequestId in its metadata.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str, http: u16) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "ccc.v20200701");
    let metadata: &HashMap<String, String> = &info.metadata;
    assert_eq!(
        metadata.get("HttpStatusCode").map(String::as_str),
        Some(http.to_string().as_str())
    );
    assert!(metadata.get("RequestId").is_some_and(|id| !id.is_empty()));
}

/// The BadRequest field violations of `status`, as (field, description).
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn state_of(channels: &[proto::ChannelContext], destination: &str) -> ChannelState {
    channels
        .iter()
        .find(|c| c.destination == destination)
        .unwrap_or_else(|| panic!("no channel to {destination}"))
        .channel_state()
}

/// Sessions of this database waiting for a row lock.
pub async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

pub fn ready_request(user: &str) -> proto::ReadyForServiceRequest {
    proto::ReadyForServiceRequest {
        instance_id: INSTANCE.into(),
        user_id: user.into(),
        outbound_scenario: false,
    }
}

/// Locks `user`'s row in a transaction of the test's own, until it ends.
pub async fn lock_agent(pool: &PgPool, user: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM agents WHERE instance_id = $1 AND user_id = $2 FOR UPDATE")
        .bind(INSTANCE)
        .bind(user)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Waits (10 s at most) until `n` sessions wait on a row lock.
pub async fn wait_for_lock_waiters(pool: &PgPool, n: i64) {
    for _ in 0..400 {
        if lock_waiters(pool).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nobody waited on the lock");
}

/// `n` ReadyForService calls for `user` through `calls`, each in a task of
/// its own, so a test can hold them on a locked row while it acts.
pub fn spawn_readies(
    calls: &Calls,
    user: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<tonic::Response<proto::ReadyForServiceResponse>, Status>>> {
    (0..n)
        .map(|_| {
            let mut calls = calls.clone();
            let request = ready_request(user);
            tokio::spawn(async move { calls.ready_for_service(request).await })
        })
        .collect()
}
