//! Nothing acknowledged is ever lost, whatever the database does: each test
//! runs the real server over a pool that reaches a private PostgreSQL
//! through a misbehaving proxy (`support`), drives it with real clients,
//! and then checks every answer it got against the rows stored.
//!
//! SLOW: about a minute in all, the tests running side by side (the
//! outage alone keeps the database down for [`OUTAGE`]). Each waits with
//! generous upper bounds only, so a hang fails the test instead of CI;
//! what they assert are counts, never timings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::proto;
use ccc_callcontrol::startup::{ServeOptions, prepare_database};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::support::private_pg::PrivatePg;
use crate::support::proxy::Proxy;

/// The database the service uses on the private server.
const DB: &str = "ccc_faults";

/// The longest any one call may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(30);

/// How long the outage test keeps the database down.
const OUTAGE: Duration = Duration::from_secs(30);

/// The server's limit on one unit of database work in these tests.
const DB_TIMEOUT: Duration = Duration::from_millis(1500);

/// What PostgreSQL logs when BEGIN arrives on a session that is already in
/// a transaction: the trace of a transaction leaked into the pool.
const LEAK_WARNING: &str = "there is already a transaction in progress";

/// The server under test, over a pool that goes through `proxy` to `pg`.
/// Fields drop in order: the server first, the database last.
struct Rig {
    app: TestApp,
    proxy: Proxy,
    pg: PrivatePg,
}

impl Rig {
    /// A private server, a proxy in front of it, the database created and
    /// migrated through the proxy, and the service over a pool of
    /// `connections` through the proxy (`spawn_app_with` builds it as the
    /// service does), with the test instance created.
    async fn new(connections: u32) -> Self {
        let pg = PrivatePg::start().await;
        let proxy = Proxy::start(pg.addr()).await;
        let args = DatabaseArgs {
            max_connections: connections,
            acquire_timeout_ms: 1000,
            ..DatabaseArgs::for_url(proxy.url(DB))
        };
        let pool = prepare_database(&args)
            .await
            .expect("the private database, through the proxy");
        let app = spawn_app_with(pool, serve_options()).await;
        app.create_instance(INSTANCE).await;
        Self { app, proxy, pg }
    }

    /// A pool straight to the private server, bypassing the proxy and the
    /// service: what the checks read through.
    async fn direct(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.pg.url(DB))
            .await
            .expect("a direct connection to the private server")
    }

    fn clients(&self) -> Clients {
        Clients {
            calls: self.app.calls.clone(),
            telephony: self.app.telephony.clone(),
            admin: self.app.admin.clone(),
            events: self.app.events.clone(),
        }
    }
}

fn serve_options() -> ServeOptions {
    ServeOptions {
        token_cache_ttl: Duration::ZERO,
        db_timeout: DB_TIMEOUT,
        ..ServeOptions::default()
    }
}

/// What a call answered, as far as these tests care.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Ok,
    /// UNAVAILABLE with the contract's ServiceUnavailable: retryable.
    Unavailable,
    /// The caller's deadline passed: DEADLINE_EXCEEDED from the server, or
    /// tonic's client giving up on its own ("Timeout expired").
    Late,
    /// Anything else, as `code/reason` (or `code: message` without an
    /// ErrorInfo).
    Other(String),
}

impl Answer {
    fn of<T>(result: &Result<T, Status>) -> Self {
        let status = match result {
            Ok(_) => return Self::Ok,
            Err(status) => status,
        };
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        match status.code() {
            Code::Unavailable if reason == "ServiceUnavailable" => Self::Unavailable,
            Code::DeadlineExceeded => Self::Late,
            Code::Cancelled if status.message() == "Timeout expired" => Self::Late,
            // The reason alone: messages name IDs, and would split counts.
            code if !reason.is_empty() => Self::Other(format!("{code:?}/{reason}")),
            code => Self::Other(format!("{code:?}: {}", status.message())),
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, Self::Other(s) if s.starts_with("Internal"))
    }
}

/// What the service acknowledged (answered OK): each must be stored.
#[derive(Debug, Default)]
struct Ledger {
    instances: Vec<String>,
    users: Vec<String>,
    /// Agents whose ReadyForService was acknowledged; nothing in these
    /// tests moves them out of READY again.
    ready: Vec<String>,
}

impl Ledger {
    fn len(&self) -> usize {
        self.instances.len() + self.users.len() + self.ready.len()
    }

    /// The acknowledged changes the database does not have.
    async fn missing(&self, db: &PgPool) -> Vec<String> {
        let instances: Vec<String> = sqlx::query_scalar(
            "SELECT 'instance ' || i FROM unnest($1::text[]) AS i
             WHERE NOT EXISTS (SELECT 1 FROM instances WHERE instance_id = i)",
        )
        .bind(&self.instances)
        .fetch_all(db)
        .await
        .unwrap();
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT 'user ' || u FROM unnest($1::text[]) AS u
             WHERE NOT EXISTS (SELECT 1 FROM agents WHERE instance_id = $2 AND user_id = u)",
        )
        .bind(&self.users)
        .bind(INSTANCE)
        .fetch_all(db)
        .await
        .unwrap();
        let ready: Vec<String> = sqlx::query_scalar(
            "SELECT 'READY ' || u FROM unnest($1::text[]) AS u
             WHERE NOT EXISTS (SELECT 1 FROM agents
                               WHERE instance_id = $2 AND user_id = u AND user_state = 'READY')",
        )
        .bind(&self.ready)
        .bind(INSTANCE)
        .fetch_all(db)
        .await
        .unwrap();
        [instances, users, ready].concat()
    }
}

// The calls the tests make, each with an optional deadline (sent as
// grpc-timeout) and bounded by HANG.

fn with_deadline<T>(message: T, deadline: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    request
}

async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {HANG:?}: a hang"))
}

async fn create_instance(c: &Clients, id: &str, deadline: Option<Duration>) -> Result<(), Status> {
    let request = proto::CreateInstanceRequest {
        instance_id: id.into(),
        name: id.into(),
        description: String::new(),
    };
    bounded(
        "CreateInstance",
        c.admin
            .clone()
            .create_instance(with_deadline(request, deadline)),
    )
    .await
    .map(drop)
}

/// Returns the new agent's UserId.
async fn create_user(
    c: &Clients,
    login: &str,
    deadline: Option<Duration>,
) -> Result<String, Status> {
    let request = proto::CreateUserRequest {
        instance_id: INSTANCE.into(),
        login_name: login.into(),
        display_name: login.into(),
        work_mode: proto::WorkMode::OnSite as i32,
        mobile: String::new(),
        extension: String::new(),
    };
    let reply = bounded(
        "CreateUser",
        c.admin
            .clone()
            .create_user(with_deadline(request, deadline)),
    )
    .await?;
    Ok(reply.into_inner().data.expect("a user").user_id)
}

async fn ready(c: &Clients, user: &str, deadline: Option<Duration>) -> Result<(), Status> {
    let request = proto::ReadyForServiceRequest {
        instance_id: INSTANCE.into(),
        user_id: user.into(),
        outbound_scenario: false,
    };
    bounded(
        "ReadyForService",
        c.calls
            .clone()
            .ready_for_service(with_deadline(request, deadline)),
    )
    .await
    .map(drop)
}

async fn poll(c: &Clients, user: &str, deadline: Option<Duration>) -> Result<(), Status> {
    let request = proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: user.into(),
    };
    bounded(
        "PollUserStatus",
        c.calls
            .clone()
            .poll_user_status(with_deadline(request, deadline)),
    )
    .await
    .map(drop)
}

/// `n` requests in a row, none with a deadline, all of which must succeed:
/// the service is healthy again.
async fn all_succeed(c: &Clients, n: usize, tag: &str) {
    let user = create_user(c, &format!("{tag}-probe"), None)
        .await
        .unwrap_or_else(|e| panic!("{tag}: CreateUser: {e:?}"));
    for i in 0..n {
        let result = match i % 3 {
            0 => create_instance(c, &format!("{tag}-{i}"), None).await,
            1 => ready(c, &user, None).await,
            _ => poll(c, &user, None).await,
        };
        if let Err(e) = result {
            panic!("{tag}: request {i} of {n} failed: {e:?}");
        }
    }
}

/// The private server's sessions on [`DB`] (but the asking one), counted
/// by state: `idle in transaction` is one a transaction was left open in.
async fn sessions_by_state(db: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid() GROUP BY 1",
    )
    .bind(DB)
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Deterministic reproduction of sqlx 0.8.6 leaking an open transaction
/// into the pool when `begin()` is dropped between sending BEGIN and
/// reading the reply. One connection, replies slowed a little so every
/// round trip is a window, and a sweep of client deadlines across the
/// whole length of the mutating calls, so some cancellation lands in each
/// window; a normal call after each group would find any leak. On the code
/// before the fix this fails every time: BEGINs on an open transaction,
/// acknowledged instances lost, a session left idle in an aborted
/// transaction that turns every later call INTERNAL.
///
/// SLOW: about 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_begin_never_leaks_a_transaction() {
    const REPLY_DELAY: Duration = Duration::from_millis(2);
    let rig = Rig::new(1).await;
    let c = rig.clients();
    rig.proxy.delay_replies(REPLY_DELAY);
    let mut answers: BTreeMap<Answer, usize> = BTreeMap::new();
    let mut normal_failures = Vec::new();
    let mut ledger = Ledger::default();
    // The sweep spans the longest of the swept calls, CreateUser, as long
    // as it takes here uncut, and a little more so some calls finish; its
    // step is half a round trip's delay, so no reply window is skipped.
    let mut longest = Duration::ZERO;
    for i in 0..3 {
        let started = Instant::now();
        let user = create_user(&c, &format!("calibrate-{i}"), None)
            .await
            .expect("CreateUser with no deadline");
        longest = longest.max(started.elapsed());
        ledger.users.push(user);
    }
    let step = REPLY_DELAY / 2;
    let steps = u32::try_from((longest * 11 / 10).as_micros() / step.as_micros()).unwrap();

    for k in 0..=steps {
        let deadline = Some(step * k);
        let n = format!("s{k}");
        let instance = format!("cut-{n}");
        let r = create_instance(&c, &instance, deadline).await;
        *answers.entry(Answer::of(&r)).or_default() += 1;
        if r.is_ok() {
            ledger.instances.push(instance);
        }
        let r = create_user(&c, &format!("cut-{n}"), deadline).await;
        *answers.entry(Answer::of(&r)).or_default() += 1;
        // The UserId is known even if the answer was lost.
        let user = format!("cut-{n}@{INSTANCE}");
        if r.is_ok() {
            ledger.users.push(user.clone());
        }
        let r = ready(&c, &user, deadline).await;
        *answers.entry(Answer::of(&r)).or_default() += 1;
        if r.is_ok() {
            ledger.ready.push(user);
        }
        // A caller with no deadline, next on the one connection.
        let instance = format!("calm-{n}");
        match create_instance(&c, &instance, None).await {
            Ok(()) => ledger.instances.push(instance),
            Err(e) => normal_failures.push(format!("{instance}: {:?}", Answer::of::<()>(&Err(e)))),
        }
    }
    rig.proxy.forward_normally();
    // Let connections on their way back to the pool get there.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let db = rig.direct().await;
    let sessions = sessions_by_state(&db).await;
    let idle_in_transaction: i64 = sessions
        .iter()
        .filter(|(state, _)| state.starts_with("idle in transaction"))
        .map(|(_, n)| n)
        .sum();
    let leaked_begins = rig.pg.log_lines_with(LEAK_WARNING);
    let missing = ledger.missing(&db).await;
    let internal: usize = answers
        .iter()
        .filter(|(a, _)| a.is_internal())
        .map(|(_, n)| n)
        .sum();
    let summary = format!(
        "deadlines 0..={:?}; answers {answers:?}; acknowledged {}; missing {missing:?}; \
         sessions {sessions:?}; {} BEGIN on an open transaction (first: {:?}); \
         normal calls failed: {normal_failures:?}",
        step * steps,
        ledger.len(),
        leaked_begins.len(),
        leaked_begins.first(),
    );
    assert_eq!(idle_in_transaction, 0, "idle in transaction: {summary}");
    assert!(leaked_begins.is_empty(), "leaked transactions: {summary}");
    assert!(missing.is_empty(), "acknowledged but lost: {summary}");
    assert_eq!(internal, 0, "INTERNAL answers: {summary}");
    assert!(
        normal_failures.is_empty(),
        "a normal call failed: {summary}"
    );
    assert!(
        answers.contains_key(&Answer::Late) && answers.contains_key(&Answer::Ok),
        "the sweep must both cut calls short and let some finish: {summary}"
    );
    all_succeed(&c, 100, "after-sweep").await;
    println!("leak reproduction: {summary}");
}

/// The phase of a fault test, as its clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Before,
    Fault,
    After,
}

/// A few clients in a loop of mutating and reading calls, each answer
/// counted by client and phase, each acknowledged change in the ledger.
struct Load {
    shared: Arc<Shared>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// How many of each answer, by client and phase.
type Answers = BTreeMap<(usize, Phase, Answer), usize>;

#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    answers: Mutex<Answers>,
    ledger: Mutex<Ledger>,
}

/// The most iterations one client makes: a bound, not a target.
const MAX_ITERATIONS: usize = 5_000;

/// What a client waits after a refused CreateUser before its next
/// iteration, as a real caller backs off: with the database down every
/// refusal is quick (connection refused), and a client that did not wait
/// ran through [`MAX_ITERATIONS`] within a 30 s outage on a fast host.
const BACKOFF: Duration = Duration::from_millis(10);

impl Shared {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Before,
            1 => Phase::Fault,
            _ => Phase::After,
        }
    }

    fn record<T>(&self, client: usize, result: &Result<T, Status>) {
        let key = (client, self.phase(), Answer::of(result));
        *self.answers.lock().unwrap().entry(key).or_default() += 1;
    }

    fn count(&self, keep: impl Fn(usize, Phase, &Answer) -> bool) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|((c, p, a), _)| keep(*c, *p, a))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Load {
    /// Starts one client per entry of `deadlines` (its deadline per call,
    /// or none).
    fn start(c: &Clients, deadlines: &[Option<Duration>]) -> Self {
        let shared = Arc::new(Shared::default());
        let clients = deadlines
            .iter()
            .enumerate()
            .map(|(id, &deadline)| tokio::spawn(client(c.clone(), id, deadline, shared.clone())))
            .collect();
        Self { shared, clients }
    }

    fn enter(&self, phase: Phase) {
        self.shared.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Waits until `done`, at most `limit` (then fails with the counts).
    async fn until(&self, what: &str, limit: Duration, done: impl Fn(&Shared) -> bool) {
        let give_up = Instant::now() + limit;
        while !done(&self.shared) {
            // A client ends before `finish` only by panicking (a hang,
            // say; its message is above) or by running out of iterations:
            // waiting on would only hide it.
            let dead = self.clients.iter().position(|c| c.is_finished());
            if dead.is_some() || Instant::now() >= give_up {
                let so_far = format!("{:?}", self.shared.answers.lock().unwrap());
                match dead {
                    Some(client) => {
                        panic!("{what}: client {client} stopped; answers so far: {so_far}")
                    }
                    None => panic!("{what}: not within {limit:?}; answers so far: {so_far}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each client has had at least `n` answers of `phase` that `keep`.
    fn each_client(
        &self,
        n: usize,
        phase: Phase,
        keep: fn(&Answer) -> bool,
    ) -> impl Fn(&Shared) -> bool {
        let clients = self.clients.len();
        move |s: &Shared| {
            (0..clients).all(|id| s.count(|c, p, a| c == id && p == phase && keep(a)) >= n)
        }
    }

    /// Stops the clients; returns their answers and the ledger.
    async fn finish(self) -> (Answers, Ledger) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            // A client that panicked (a hang, say) fails the test here.
            client.await.expect("a load client");
        }
        let shared = Arc::try_unwrap(self.shared).ok().expect("clients are done");
        (
            shared.answers.into_inner().unwrap(),
            shared.ledger.into_inner().unwrap(),
        )
    }
}

async fn client(c: Clients, id: usize, deadline: Option<Duration>, shared: Arc<Shared>) {
    for i in 0..MAX_ITERATIONS {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let instance = format!("load-c{id}-{i}");
        let r = create_instance(&c, &instance, deadline).await;
        shared.record(id, &r);
        if r.is_ok() {
            shared.ledger.lock().unwrap().instances.push(instance);
        }
        // A CreateUser that failed may still have committed: its login is
        // not used again, so nothing later depends on that ambiguity.
        let r = create_user(&c, &format!("load-c{id}-{i}"), deadline).await;
        shared.record(id, &r);
        let Ok(user) = r else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        shared.ledger.lock().unwrap().users.push(user.clone());
        let r = ready(&c, &user, deadline).await;
        shared.record(id, &r);
        if r.is_ok() {
            shared.ledger.lock().unwrap().ready.push(user.clone());
        }
        let r = poll(&c, &user, deadline).await;
        shared.record(id, &r);
    }
}

/// The end of every fault test, once the fault is over: each client
/// succeeds again, no answer is outside `allowed` (client, answer), every
/// acknowledged change is stored, and a run of requests all succeed.
/// Returns the answers, for the test's own checks, with a summary.
async fn after_the_fault(
    test: &str,
    rig: &Rig,
    load: Load,
    allowed: impl Fn(usize, &Answer) -> bool,
) -> (Answers, String) {
    load.enter(Phase::After);
    load.until(
        "recovery",
        Duration::from_secs(90),
        load.each_client(10, Phase::After, |a| *a == Answer::Ok),
    )
    .await;
    let (answers, ledger) = load.finish().await;
    let summary = format!("answers {answers:?}; acknowledged {}", ledger.len());
    let wrong: Vec<_> = answers
        .iter()
        .filter(|((c, _, a), _)| !allowed(*c, a))
        .collect();
    assert!(wrong.is_empty(), "unexpected answers {wrong:?}; {summary}");
    let missing = ledger.missing(&rig.direct().await).await;
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?}; {summary}"
    );
    all_succeed(&rig.clients(), 20, "after-the-fault").await;
    // The figures docs/reliability.md quotes (`--nocapture` shows them).
    println!("{test}: {summary}");
    (answers, summary)
}

/// PostgreSQL goes away (killed, as in a crash) and comes back: callers get
/// only OK or the retryable ServiceUnavailable meanwhile, the service
/// recovers by itself, and every acknowledged change survived.
///
/// SLOW: about 35 s (the database is down for [`OUTAGE`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_only_unavailable_and_loses_nothing() {
    let rig = Rig::new(4).await;
    let load = Load::start(&rig.clients(), &[None; 4]);
    load.until(
        "load before the outage",
        Duration::from_secs(60),
        load.each_client(5, Phase::Before, |a| *a == Answer::Ok),
    )
    .await;

    load.enter(Phase::Fault);
    rig.pg.stop().await;
    tokio::time::sleep(OUTAGE).await;
    rig.pg.restart().await;

    let (answers, summary) = after_the_fault("outage", &rig, load, |_, a| {
        matches!(a, Answer::Ok | Answer::Unavailable)
    })
    .await;
    let refused: usize = answers
        .iter()
        .filter(|((_, p, a), _)| *p == Phase::Fault && *a == Answer::Unavailable)
        .map(|(_, n)| n)
        .sum();
    assert!(refused > 0, "the outage was felt: {summary}");
}

/// The network to PostgreSQL goes silent (sockets open, no bytes either
/// way): every request still answers, ServiceUnavailable once the
/// database work's time is up (or late, for callers whose own deadline
/// is shorter), instead of hanging; once the network is back, requests
/// succeed and nothing acknowledged is lost.
///
/// SLOW: about 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_costs_a_bounded_wait_then_unavailable() {
    // Two patient callers, and two whose deadline is shorter than the
    // server's limit on database work.
    const SHORT: Duration = Duration::from_millis(700);
    let deadlines = [None, None, Some(SHORT), Some(SHORT)];
    let patient = |client: usize| deadlines[client].is_none();
    let rig = Rig::new(4).await;
    let load = Load::start(&rig.clients(), &deadlines);
    load.until(
        "load before the stall",
        Duration::from_secs(60),
        load.each_client(5, Phase::Before, |a| *a == Answer::Ok),
    )
    .await;

    load.enter(Phase::Fault);
    rig.proxy.stall();
    load.until(
        "answers while silent",
        Duration::from_secs(60),
        load.each_client(3, Phase::Fault, |a| *a != Answer::Ok),
    )
    .await;
    rig.proxy.resume();

    let (answers, summary) = after_the_fault("silent", &rig, load, |client, a| match a {
        Answer::Ok | Answer::Unavailable => true,
        Answer::Late => !patient(client),
        Answer::Other(_) => false,
    })
    .await;
    for client in (0..deadlines.len()).filter(|&c| patient(c)) {
        let unavailable = answers
            .get(&(client, Phase::Fault, Answer::Unavailable))
            .copied()
            .unwrap_or(0);
        assert!(
            unavailable > 0,
            "client {client} was told the database is unavailable: {summary}"
        );
    }
}

/// Every connection to PostgreSQL is cut at once (some mid-transaction)
/// and new ones are refused for a while: callers get only OK or the
/// retryable ServiceUnavailable, the pool heals by itself, and nothing
/// acknowledged is lost.
///
/// SLOW: about 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_refused_connections_give_only_unavailable_and_lose_nothing() {
    let rig = Rig::new(4).await;
    let load = Load::start(&rig.clients(), &[None; 4]);
    load.until(
        "load before the cut",
        Duration::from_secs(60),
        load.each_client(5, Phase::Before, |a| *a == Answer::Ok),
    )
    .await;

    load.enter(Phase::Fault);
    rig.proxy.refuse(true);
    rig.proxy.cut();
    load.until(
        "answers while cut off",
        Duration::from_secs(60),
        load.each_client(2, Phase::Fault, |a| *a == Answer::Unavailable),
    )
    .await;
    rig.proxy.refuse(false);

    after_the_fault("cut", &rig, load, |_, a| {
        matches!(a, Answer::Ok | Answer::Unavailable)
    })
    .await;
}

/// How a storm call is cut short, if at all.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// A normal call.
    None,
    /// Sent with this grpc-timeout.
    Deadline(Duration),
    /// Dropped by the client (the stream is reset) after this long.
    Drop(Duration),
}

impl Cut {
    fn random() -> Self {
        match rand::random_range(0..10) {
            0..3 => Self::None,
            3..7 => Self::Deadline(Duration::from_micros(rand::random_range(0..5_000))),
            _ => Self::Drop(Duration::from_micros(rand::random_range(0..4_000))),
        }
    }

    fn request<T>(self, message: T) -> Request<T> {
        match self {
            Self::Deadline(d) => with_deadline(message, Some(d)),
            _ => Request::new(message),
        }
    }

    /// Runs `call`, cut as this says; `None` if the client dropped it.
    async fn run<T>(
        self,
        what: &str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<Result<T, Status>> {
        match self {
            Self::Drop(after) => tokio::time::timeout(after, call).await.ok(),
            _ => Some(bounded(what, call).await),
        }
    }
}

/// What the storm's clients saw and what the service acknowledged.
#[derive(Debug, Default)]
struct Storm {
    answers: BTreeMap<Answer, usize>,
    dropped: usize,
    instances: Vec<String>,
    /// Calls whose StartConference was acknowledged.
    calls: Vec<String>,
    /// (JobId, UserId) whose EndConference was acknowledged.
    left: Vec<(String, String)>,
}

impl Storm {
    fn count<T>(&mut self, outcome: &Option<Result<T, Status>>) {
        match outcome {
            None => self.dropped += 1,
            Some(r) => *self.answers.entry(Answer::of(r)).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Storm) {
        for (a, n) in other.answers {
            *self.answers.entry(a).or_default() += n;
        }
        self.dropped += other.dropped;
        self.instances.extend(other.instances);
        self.calls.extend(other.calls);
        self.left.extend(other.left);
    }

    fn total(&self) -> usize {
        self.answers.values().sum::<usize>() + self.dropped
    }
}

/// One storm worker: its two agents go round ready → conference → both
/// leave, and it creates instances, every call cut at a random moment
/// (or not), `rounds` times.
async fn storm_worker(
    c: Clients,
    tag: String,
    a: String,
    b_ext: String,
    b: String,
    rounds: usize,
) -> Storm {
    let mut storm = Storm::default();
    for round in 0..rounds {
        for user in [&a, &b] {
            let cut = Cut::random();
            let request = cut.request(proto::ReadyForServiceRequest {
                instance_id: INSTANCE.into(),
                user_id: user.clone(),
                outbound_scenario: false,
            });
            let r = cut
                .run(
                    "ReadyForService",
                    c.calls.clone().ready_for_service(request),
                )
                .await;
            storm.count(&r);
        }
        let cut = Cut::random();
        let request = cut.request(proto::StartConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: a.clone(),
            participant_list_json: format!("[\"{b_ext}\", \"{CUSTOMER}\"]"),
            timeout_seconds: None,
            tags: String::new(),
        });
        let r = cut
            .run("StartConference", c.calls.clone().start_conference(request))
            .await;
        storm.count(&r);
        if let Some(Ok(reply)) = r {
            let job = reply
                .into_inner()
                .data
                .unwrap()
                .call_context
                .unwrap()
                .job_id;
            storm.calls.push(job);
        }
        // Whatever the start's answer, the agent's current call is what
        // to leave (a cut start may have happened).
        let job = bounded(
            "PollUserStatus",
            c.calls
                .clone()
                .poll_user_status(proto::PollUserStatusRequest {
                    instance_id: INSTANCE.into(),
                    user_id: a.clone(),
                }),
        )
        .await
        .expect("an uncut poll")
        .into_inner()
        .data
        .unwrap()
        .user_context
        .unwrap()
        .job_id;
        if !job.is_empty() {
            for user in [&a, &b] {
                let cut = Cut::random();
                let request = cut.request(proto::EndConferenceRequest {
                    instance_id: INSTANCE.into(),
                    user_id: user.clone(),
                    job_id: job.clone(),
                });
                let r = cut
                    .run("EndConference", c.calls.clone().end_conference(request))
                    .await;
                storm.count(&r);
                if matches!(r, Some(Ok(_))) {
                    storm.left.push((job.clone(), user.clone()));
                }
            }
        }
        let cut = Cut::random();
        let instance = format!("{tag}-{round}");
        let request = cut.request(proto::CreateInstanceRequest {
            instance_id: instance.clone(),
            name: instance.clone(),
            description: String::new(),
        });
        let r = cut
            .run("CreateInstance", c.admin.clone().create_instance(request))
            .await;
        storm.count(&r);
        if matches!(r, Some(Ok(_))) {
            storm.instances.push(instance);
        }
    }
    storm
}

/// The call-control invariants, as rows that break them (none expected).
async fn broken_invariants(db: &PgPool) -> Vec<String> {
    const LIVE: &str = "('CREATED', 'RINGING', 'EARLY_MEDIA', 'ANSWERED')";
    let checks = [
        (
            "a call up with fewer than two live parties",
            format!(
                "SELECT c.job_id FROM calls c WHERE c.ended_at IS NULL
                 AND (SELECT count(*) FROM channels ch WHERE ch.instance_id = c.instance_id
                      AND ch.job_id = c.job_id AND ch.channel_state IN {LIVE}) < 2"
            ),
        ),
        (
            "an ended call with a live party",
            format!(
                "SELECT c.job_id FROM calls c WHERE c.ended_at IS NOT NULL
                 AND EXISTS (SELECT 1 FROM channels ch WHERE ch.instance_id = c.instance_id
                             AND ch.job_id = c.job_id AND ch.channel_state IN {LIVE})"
            ),
        ),
        (
            "an agent live in two channels",
            format!(
                "SELECT user_id FROM channels WHERE user_id IS NOT NULL AND channel_state IN {LIVE}
                 GROUP BY instance_id, user_id HAVING count(*) > 1"
            ),
        ),
        (
            "an agent live in a call that is not its JobId, or not busy",
            format!(
                "SELECT a.user_id FROM agents a JOIN channels ch USING (instance_id, user_id)
                 WHERE ch.channel_state IN {LIVE}
                   AND (a.job_id IS DISTINCT FROM ch.job_id
                        OR a.user_state NOT IN ('RINGING', 'DIALING', 'TALKING'))"
            ),
        ),
        (
            "a busy agent with no live channel in its call",
            format!(
                "SELECT a.user_id FROM agents a
                 WHERE a.user_state IN ('RINGING', 'DIALING', 'TALKING')
                   AND NOT EXISTS (SELECT 1 FROM channels ch
                                   WHERE ch.instance_id = a.instance_id AND ch.user_id = a.user_id
                                     AND ch.job_id = a.job_id AND ch.channel_state IN {LIVE})"
            ),
        ),
        (
            "a call whose ContextId is not its last event",
            "SELECT c.job_id FROM calls c
             WHERE c.context_id IS DISTINCT FROM (SELECT max(event_id) FROM events e
                                                  WHERE e.instance_id = c.instance_id
                                                    AND e.job_id = c.job_id)"
                .to_owned(),
        ),
        (
            "an agent whose ContextId is not its last event",
            "SELECT a.user_id FROM agents a
             WHERE a.context_id IS DISTINCT FROM (SELECT max(event_id) FROM events e
                                                  WHERE e.instance_id = a.instance_id
                                                    AND a.user_id = ANY (e.user_ids))"
                .to_owned(),
        ),
    ];
    let mut broken = Vec::new();
    for (what, sql) in checks {
        let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(db).await.unwrap();
        broken.extend(rows.into_iter().map(|r| format!("{what}: {r}")));
    }
    broken
}

/// A cancellation storm: eight clients drive whole call lifecycles and
/// provisioning, most calls cut at a random moment (a grpc-timeout of
/// 0-5 ms, or dropped by the client after 0-4 ms), first straight, then
/// with every database reply delayed by a millisecond. Afterwards: no
/// session idle in a transaction, no BEGIN on an open transaction, every
/// acknowledged change stored, no INTERNAL answer, the call-control
/// invariants hold (and the event log matches the state), and the next
/// 1,000 requests succeed.
///
/// SLOW: about 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_storm_loses_nothing() {
    const WORKERS: usize = 8;
    const ROUNDS: usize = 30;
    let rig = Rig::new(4).await;
    let c = rig.clients();
    let db = rig.direct().await;
    let mut agents = Vec::new();
    for w in 0..WORKERS {
        let a = create_user(&c, &format!("w{w}a"), None).await.unwrap();
        let b = create_user(&c, &format!("w{w}b"), None).await.unwrap();
        let b_ext: String = sqlx::query_scalar("SELECT extension FROM agents WHERE user_id = $1")
            .bind(&b)
            .fetch_one(&db)
            .await
            .unwrap();
        agents.push((a, b_ext, b));
    }

    let mut storm = Storm::default();
    for (phase, delay) in [
        ("straight", None),
        ("slowed", Some(Duration::from_millis(1))),
    ] {
        if let Some(d) = delay {
            rig.proxy.delay_replies(d);
        }
        let workers: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(w, (a, b_ext, b))| {
                tokio::spawn(storm_worker(
                    c.clone(),
                    format!("storm-{phase}-{w}"),
                    a.clone(),
                    b_ext.clone(),
                    b.clone(),
                    ROUNDS,
                ))
            })
            .collect();
        for w in workers {
            storm.merge(w.await.unwrap());
        }
    }
    rig.proxy.forward_normally();
    // Units of cut requests may still be running: give them their timeout.
    tokio::time::sleep(DB_TIMEOUT + Duration::from_millis(500)).await;

    let sessions = sessions_by_state(&db).await;
    let idle_in_transaction: i64 = sessions
        .iter()
        .filter(|(state, _)| state.starts_with("idle in transaction"))
        .map(|(_, n)| n)
        .sum();
    let leaked_begins = rig.pg.log_lines_with(LEAK_WARNING);
    let missing_instances: Vec<String> = sqlx::query_scalar(
        "SELECT i FROM unnest($1::text[]) AS i
         WHERE NOT EXISTS (SELECT 1 FROM instances WHERE instance_id = i)",
    )
    .bind(&storm.instances)
    .fetch_all(&db)
    .await
    .unwrap();
    let missing_calls: Vec<String> = sqlx::query_scalar(
        "SELECT j FROM unnest($1::text[]) AS j
         WHERE NOT EXISTS (SELECT 1 FROM calls WHERE instance_id = $2 AND job_id = j)",
    )
    .bind(&storm.calls)
    .bind(INSTANCE)
    .fetch_all(&db)
    .await
    .unwrap();
    let (jobs, users): (Vec<String>, Vec<String>) = storm.left.iter().cloned().unzip();
    let still_in: Vec<String> = sqlx::query_scalar(
        "SELECT l.u || ' in ' || l.j FROM unnest($1::text[], $2::text[]) AS l(j, u)
         WHERE NOT EXISTS (SELECT 1 FROM channels WHERE instance_id = $3 AND job_id = l.j
                           AND user_id = l.u AND channel_state = 'RELEASED')",
    )
    .bind(&jobs)
    .bind(&users)
    .bind(INSTANCE)
    .fetch_all(&db)
    .await
    .unwrap();
    let broken = broken_invariants(&db).await;
    let internal: usize = storm
        .answers
        .iter()
        .filter(|(a, _)| a.is_internal())
        .map(|(_, n)| n)
        .sum();
    let cut = storm.dropped + storm.answers.get(&Answer::Late).copied().unwrap_or(0);
    let summary = format!(
        "{} calls ({cut} cut: {} dropped by the client), answers {:?}; acknowledged {} instances, \
         {} calls, {} leaves; sessions {sessions:?}; {} BEGIN on an open transaction",
        storm.total(),
        storm.dropped,
        storm.answers,
        storm.instances.len(),
        storm.calls.len(),
        storm.left.len(),
        leaked_begins.len(),
    );
    println!("cancellation storm: {summary}");
    assert!(storm.total() >= 2_000, "a storm: {summary}");
    assert!(cut >= 500, "most of it cut: {summary}");
    assert_eq!(idle_in_transaction, 0, "idle in transaction: {summary}");
    assert!(leaked_begins.is_empty(), "leaked transactions: {summary}");
    assert!(
        missing_instances.is_empty() && missing_calls.is_empty() && still_in.is_empty(),
        "acknowledged but lost: {missing_instances:?} {missing_calls:?} {still_in:?}: {summary}"
    );
    assert_eq!(internal, 0, "INTERNAL answers: {summary}");
    assert!(broken.is_empty(), "invariants: {broken:?}: {summary}");

    let after: Vec<_> = (0..WORKERS)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move { all_succeed(&c, 125, &format!("after-storm-{w}")).await })
        })
        .collect();
    for a in after {
        a.await.expect("the next 1,000 requests succeed");
    }
}
