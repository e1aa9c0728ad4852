//! The bench's units of work and how they move: provisioning agents, the
//! call lifecycle a group of agents goes round, and the measurement window
//! that keeps a fixed number of requests in flight.
//!
//! A *group* is one conference's worth of agents: the initiator and the
//! agents it invites (parties − 2), plus a customer number. Only one
//! request acts on a group at a time, so workers never contend for rows
//! unless the workload is about contention (none is, yet).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::BenchWorkload;
use crate::proto::{
    self, admin_client::AdminClient, call_control_client::CallControlClient,
    channel_context::ChannelState, telephony_client::TelephonyClient,
};

/// Sends the bench's bearer token with every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Intercepted = InterceptedService<Channel, Bearer>;

/// The three public clients over one connection.
#[derive(Clone)]
pub struct Clients {
    calls: CallControlClient<Intercepted>,
    telephony: TelephonyClient<Intercepted>,
    pub(super) admin: AdminClient<Intercepted>,
}

impl Clients {
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        let bearer = Bearer(
            format!("Bearer {token}")
                .parse()
                .context("The token is not valid header text")?,
        );
        Ok(Self {
            calls: CallControlClient::with_interceptor(channel.clone(), bearer.clone()),
            telephony: TelephonyClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel, bearer),
        })
    }
}

/// An agent the bench created.
#[derive(Debug, Clone)]
pub struct Agent {
    pub user_id: String,
    pub extension: String,
}

/// Creates `instance` and `n` agents in it. CreateUser takes turns per
/// instance on the server, so a few at a time is as fast as it gets.
pub async fn provision(clients: &Clients, instance: &str, n: usize) -> anyhow::Result<Vec<Agent>> {
    clients
        .admin
        .clone()
        .create_instance(proto::CreateInstanceRequest {
            instance_id: instance.into(),
            name: format!("{instance} (bench)"),
            description: "made by ccc-callcontrol bench".into(),
        })
        .await
        .context("CreateInstance")?;
    let mut agents = Vec::with_capacity(n);
    let mut next = 0..n;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < 8 {
            let Some(i) = next.next() else { break };
            let mut admin = clients.admin.clone();
            let request = proto::CreateUserRequest {
                instance_id: instance.into(),
                login_name: format!("agent{i}"),
                display_name: format!("Agent {i}"),
                work_mode: proto::WorkMode::OnSite as i32,
                mobile: String::new(),
                extension: String::new(),
            };
            running.spawn(async move { admin.create_user(request).await });
        }
        let Some(created) = running.join_next().await else {
            break;
        };
        let user = created
            .context("CreateUser task")?
            .context("CreateUser")?
            .into_inner()
            .data
            .context("CreateUser without Data")?;
        agents.push(Agent {
            user_id: user.user_id,
            extension: user.extension,
        });
    }
    Ok(agents)
}

/// Agents one unit of work takes.
pub fn agents_per_group(workload: BenchWorkload, parties: usize) -> usize {
    match workload {
        BenchWorkload::PollUserStatus => 1,
        _ => parties - 1,
    }
}

/// Splits `agents` into groups (whole groups only).
pub fn groups(workload: BenchWorkload, agents: Vec<Agent>, parties: usize) -> Vec<Group> {
    let size = agents_per_group(workload, parties);
    agents
        .chunks_exact(size)
        .enumerate()
        .map(|(i, chunk)| Group {
            initiator: chunk[0].clone(),
            invitees: chunk[1..].to_vec(),
            customer: format!("+86139{i:08}"),
            stage: Stage::Idle,
            job_id: String::new(),
            channels: Vec::new(),
        })
        .collect()
}

/// Where a group is in its call lifecycle. The cycle is Idle → Ready →
/// Ringing → Answered → Left → Idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No call; agents OFFLINE (new), WORKING (after a call) or READY.
    Idle,
    /// Every agent READY.
    Ready,
    /// The initiator started a conference; the other channels ring.
    Ringing,
    /// Every channel answered.
    Answered,
    /// The initiator left; the others may still talk.
    Left,
}

/// What a worker does with each group it takes.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Untimed: move the group on until it reaches this stage.
    Prepare(Stage),
    /// One timed step (the workload's action), then set the group aside.
    Step,
    /// A whole timed lifecycle, then back to the end of the queue.
    Cycle,
    /// One timed PollUserStatus, then back to the end of the queue.
    Poll,
}

/// How a workload runs: its timed mode, and the stage each group must be
/// prepared to first (`None`: no preparation, the windows never run dry).
pub fn modes(workload: BenchWorkload) -> (Mode, Option<Stage>) {
    match workload {
        BenchWorkload::EndConference => (Mode::Step, Some(Stage::Answered)),
        BenchWorkload::StartConference => (Mode::Step, Some(Stage::Ready)),
        BenchWorkload::ReportChannelEvent => (Mode::Step, Some(Stage::Ringing)),
        BenchWorkload::PollUserStatus => (Mode::Poll, None),
        BenchWorkload::Mixed => (Mode::Cycle, None),
    }
}

/// One conference's worth of agents and the state of their call.
#[derive(Debug)]
pub struct Group {
    initiator: Agent,
    invitees: Vec<Agent>,
    customer: String,
    stage: Stage,
    job_id: String,
    /// The participants' channels: invitees in order, then the customer.
    channels: Vec<String>,
}

/// The connections the workers share: `clients`, in `replicas` equal runs,
/// one run per replica of the service.
pub struct Connections {
    pub clients: Vec<Clients>,
    pub replicas: usize,
}

/// A worker's clients, one per replica of the service: each request goes
/// to one of them at random, as a mesh that spreads requests would send it.
#[derive(Clone)]
pub struct Spread(Vec<Clients>);

impl Spread {
    /// Worker `w`'s: connection `w % per` of each replica's run.
    fn of_worker(to: &Connections, w: usize) -> Self {
        let picked = worker_connections(to.clients.len(), to.replicas, w)
            .map(|i| to.clients[i].clone())
            .collect();
        Self(picked)
    }

    /// The clients for the next request.
    fn pick(&self) -> &Clients {
        match self.0.len() {
            1 => &self.0[0],
            n => &self.0[rand::random_range(0..n)],
        }
    }
}

/// Which of `len` connections, in `replicas` equal runs, worker `w` uses:
/// one in each run, the same place in each.
fn worker_connections(len: usize, replicas: usize, w: usize) -> impl Iterator<Item = usize> {
    let per = (len / replicas).max(1);
    (0..replicas).map(move |r| (r * per + w % per) % len)
}

impl Group {
    /// Moves one stage on, timing each request in `rec`.
    async fn advance(
        &mut self,
        c: &Spread,
        instance: &str,
        rec: &mut Recorder,
    ) -> Result<(), Status> {
        let next = match self.stage {
            Stage::Idle => {
                for agent in std::iter::once(&self.initiator).chain(&self.invitees) {
                    let request = proto::ReadyForServiceRequest {
                        instance_id: instance.into(),
                        user_id: agent.user_id.clone(),
                        outbound_scenario: false,
                    };
                    rec.time(
                        "ReadyForService",
                        c.pick().calls.clone().ready_for_service(request),
                    )
                    .await?;
                }
                Stage::Ready
            }
            Stage::Ready => {
                let mut participants: Vec<&str> =
                    self.invitees.iter().map(|a| a.extension.as_str()).collect();
                participants.push(&self.customer);
                let request = proto::StartConferenceRequest {
                    instance_id: instance.into(),
                    user_id: self.initiator.user_id.clone(),
                    participant_list_json: serde_json::to_string(&participants)
                        .expect("strings serialize"),
                    timeout_seconds: None,
                    tags: String::new(),
                };
                let started = rec
                    .time(
                        "StartConference",
                        c.pick().calls.clone().start_conference(request),
                    )
                    .await?
                    .into_inner();
                let call = started
                    .data
                    .and_then(|d| d.call_context)
                    .ok_or_else(|| Status::internal("StartConference without CallContext"))?;
                self.job_id = call.job_id;
                self.channels = participants
                    .iter()
                    .map(|p| {
                        call.channel_contexts
                            .iter()
                            .find(|ch| ch.destination == *p)
                            .map(|ch| ch.channel_id.clone())
                            .ok_or_else(|| Status::internal(format!("no channel to {p}")))
                    })
                    .collect::<Result<_, _>>()?;
                Stage::Ringing
            }
            Stage::Ringing => {
                for channel in &self.channels {
                    let request = self.report(instance, channel, ChannelState::Answered);
                    rec.time(
                        "ReportChannelEvent",
                        c.pick().telephony.clone().report_channel_event(request),
                    )
                    .await?;
                }
                Stage::Answered
            }
            Stage::Answered => {
                let request = proto::EndConferenceRequest {
                    instance_id: instance.into(),
                    user_id: self.initiator.user_id.clone(),
                    job_id: self.job_id.clone(),
                };
                let answer = rec
                    .time(
                        "EndConference",
                        c.pick().calls.clone().end_conference(request),
                    )
                    .await?;
                rec.committed(answer.get_ref().data.as_ref().map(|d| d.context_id));
                Stage::Left
            }
            Stage::Left => {
                // Hang up the others from the customer back until the
                // two-party rule ends the call (at once with two parties).
                if self.channels.len() > 1 {
                    for channel in self.channels.iter().rev() {
                        let request = self.report(instance, channel, ChannelState::Released);
                        let answer = rec
                            .time(
                                "ReportChannelEvent",
                                c.pick().telephony.clone().report_channel_event(request),
                            )
                            .await?
                            .into_inner();
                        let ended = answer
                            .data
                            .and_then(|d| d.call_context)
                            .is_some_and(|call| {
                                call.channel_contexts
                                    .iter()
                                    .all(|ch| ch.channel_state() == ChannelState::Released)
                            });
                        if ended {
                            break;
                        }
                    }
                }
                Stage::Idle
            }
        };
        self.stage = next;
        Ok(())
    }

    fn report(
        &self,
        instance: &str,
        channel: &str,
        state: ChannelState,
    ) -> proto::ReportChannelEventRequest {
        proto::ReportChannelEventRequest {
            instance_id: instance.into(),
            job_id: self.job_id.clone(),
            channel_id: channel.into(),
            channel_state: state as i32,
            release_initiator: String::new(),
            release_reason: String::new(),
        }
    }

    async fn poll(&self, c: &Spread, instance: &str, rec: &mut Recorder) -> Result<(), Status> {
        let request = proto::PollUserStatusRequest {
            instance_id: instance.into(),
            user_id: self.initiator.user_id.clone(),
        };
        rec.time(
            "PollUserStatus",
            c.pick().calls.clone().poll_user_status(request),
        )
        .await?;
        Ok(())
    }

    /// Does what `mode` says to this group.
    async fn run(
        &mut self,
        mode: Mode,
        c: &Spread,
        instance: &str,
        rec: &mut Recorder,
    ) -> Result<(), Status> {
        match mode {
            Mode::Prepare(until) => {
                while self.stage != until {
                    self.advance(c, instance, rec).await?;
                }
            }
            Mode::Step => self.advance(c, instance, rec).await?,
            Mode::Cycle => {
                self.advance(c, instance, rec).await?;
                while self.stage != Stage::Idle {
                    self.advance(c, instance, rec).await?;
                }
            }
            Mode::Poll => self.poll(c, instance, rec).await?,
        }
        Ok(())
    }
}

/// Latencies by action, in microseconds, and errors.
pub struct Recorder {
    on: bool,
    pub by_action: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: u64,
    /// The first few errors, for the report.
    pub first_errors: Vec<String>,
    /// Each EndConference answered: its ContextId and when the answer
    /// arrived (≈ its commit), for the watchers' delivery latency.
    pub commits: Vec<(i64, Instant)>,
}

/// Errors the report quotes at most.
const QUOTED_ERRORS: usize = 5;

impl Recorder {
    /// A recorder that records (`on`) or only passes results through.
    pub fn new(on: bool) -> Self {
        Self {
            on,
            by_action: BTreeMap::new(),
            errors: 0,
            first_errors: Vec::new(),
            commits: Vec::new(),
        }
    }

    /// Notes that a change with this ContextId was answered just now.
    fn committed(&mut self, context_id: Option<i64>) {
        if let (true, Some(id)) = (self.on, context_id) {
            self.commits.push((id, Instant::now()));
        }
    }

    /// A histogram for latencies from 1 µs to an hour, to 3 significant
    /// digits (what hdrhistogram's docs suggest for latencies).
    pub fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
    }

    /// Times `call` as one `action` request.
    pub async fn time<T>(
        &mut self,
        action: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = call.await;
        let micros = started.elapsed().as_micros().max(1) as u64;
        if self.on {
            match &result {
                Ok(_) => self
                    .by_action
                    .entry(action)
                    .or_insert_with(Self::histogram)
                    .saturating_record(micros),
                Err(status) => self.error(format!(
                    "{action}: {:?} {}",
                    status.code(),
                    status.message()
                )),
            }
        }
        result
    }

    fn error(&mut self, text: String) {
        self.errors += 1;
        if self.first_errors.len() < QUOTED_ERRORS {
            self.first_errors.push(text);
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        for (action, h) in other.by_action {
            self.by_action
                .entry(action)
                .or_insert_with(Self::histogram)
                .add(&h)
                .expect("same bounds");
        }
        self.errors += other.errors;
        self.commits.extend(other.commits);
        for e in other.first_errors {
            if self.first_errors.len() < QUOTED_ERRORS {
                self.first_errors.push(e);
            }
        }
    }
}

/// What a window did.
pub struct Window {
    /// From the first request sent to the last answer.
    pub elapsed: Duration,
    pub recorder: Recorder,
    /// The groups still usable, in any order.
    pub groups: Vec<Group>,
    /// Groups set aside because a request on them failed: their state is
    /// unknown, so they are not used again.
    pub dropped: usize,
}

/// `workers` tasks take groups from a shared queue and do `mode` to each,
/// until the queue is empty or `deadline` passes (a worker finishes the
/// group in hand). Each worker waits for its answer before its next
/// request, so at most `workers` requests are in flight.
pub async fn window(
    groups: Vec<Group>,
    workers: usize,
    to: &Connections,
    instance: &Arc<str>,
    mode: Mode,
    deadline: Option<Instant>,
    record: bool,
) -> Window {
    let requeue = matches!(mode, Mode::Cycle | Mode::Poll);
    let queue = Arc::new(Mutex::new(VecDeque::from(groups)));
    let done = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (queue, done) = (queue.clone(), done.clone());
        let c = Spread::of_worker(to, w);
        let instance = instance.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new(record);
            let mut dropped = 0usize;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Some(mut group) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                match group.run(mode, &c, &instance, &mut rec).await {
                    Ok(()) if requeue => queue.lock().expect("queue").push_back(group),
                    Ok(()) => done.lock().expect("done").push(group),
                    Err(status) => {
                        if !record {
                            tracing::warn!(code = ?status.code(), message = status.message(), "bench: preparing a group failed; setting it aside");
                        }
                        dropped += 1;
                    }
                }
            }
            (rec, dropped)
        }));
    }
    let mut recorder = Recorder::new(record);
    let mut dropped = 0;
    for task in tasks {
        match task.await {
            Ok((rec, d)) => {
                recorder.merge(rec);
                dropped += d;
            }
            Err(e) => recorder.error(format!("a worker failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let mut groups: Vec<Group> = std::mem::take(&mut *done.lock().expect("done"));
    groups.extend(queue.lock().expect("queue").drain(..));
    Window {
        elapsed,
        recorder,
        groups,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::worker_connections;

    fn of(len: usize, replicas: usize, w: usize) -> Vec<usize> {
        worker_connections(len, replicas, w).collect()
    }

    #[test]
    fn one_replica_gives_each_worker_its_own_connection_in_turn() {
        assert_eq!(of(8, 1, 0), [0]);
        assert_eq!(of(8, 1, 9), [1]);
    }

    #[test]
    fn each_worker_reaches_every_replica_on_a_connection_of_its_own() {
        // Two replicas, four connections each: 0..4 reach the first.
        assert_eq!(of(8, 2, 0), [0, 4]);
        assert_eq!(of(8, 2, 3), [3, 7]);
        assert_eq!(of(8, 2, 5), [1, 5]);
        assert_eq!(of(9, 3, 2), [2, 5, 8]);
    }
}
