//! The real `ccc-callcontrol` binary as tests run it: started on a free
//! port against a test's database, its JSON log kept (and shown if the
//! test fails), signalled like an orchestrator would, waited for. Shared
//! by the test binaries that need the process itself (`api`, `otlp`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// The binary serving on a free port.
pub struct Served {
    child: Child,
    pub addr: String,
    /// Its log so far, shown if the test fails.
    log: Arc<Mutex<Vec<String>>>,
}

/// `pool`'s database on the server of `DATABASE_URL`, reached at
/// `through` (e.g. a proxy) if given: `postgres://user:pw@host:port/db`.
pub fn database_url(pool: &PgPool, through: Option<std::net::SocketAddr>) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    let server = match (through, server.rsplit_once('@')) {
        (Some(addr), Some((credentials, _))) => format!("{credentials}@{addr}"),
        (Some(addr), None) => format!("postgres://{addr}"),
        (None, _) => server.to_owned(),
    };
    let db = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    format!("{server}/{db}")
}

impl Served {
    /// `serve` over `database_url` with `flags` and `env` added. Reads the
    /// log on a thread of its own: the test's runtime may be what serves
    /// the binary's database (a proxy).
    pub async fn start(database_url: &str, flags: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ccc-callcontrol"))
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the binary");
        // Its log says where it listens; the rest is kept (so the pipe
        // never fills) and shown if the test fails.
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let addr = loop {
                let Some(Ok(line)) = lines.next() else {
                    panic!(
                        "the binary ended before it served: {:#?}",
                        kept.lock().unwrap()
                    );
                };
                kept.lock().unwrap().push(line.clone());
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "serving gRPC" {
                    break entry["address"].as_str().unwrap().to_owned();
                }
            };
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    kept.lock().unwrap().push(line);
                }
            });
            addr
        })
        .await
        .unwrap();
        Self { child, addr, log }
    }

    /// Its log lines so far, each parsed as JSON (`Null` for a line that
    /// is not JSON).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let log = self.log.lock().unwrap();
        log.iter()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect()
    }

    /// The first log line that `matches`, waiting up to 2 s for it: the
    /// log is read on a thread of its own. Panics with the log if none.
    pub async fn log_line(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..100 {
            if let Some(line) = self.log_lines().into_iter().find(&matches) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no such line in the log: {:#?}", self.log_lines());
    }

    /// A gRPC connection of its own to the binary.
    pub async fn connect(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// SIGTERM, as an orchestrator stops a pod.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM sent");
    }

    /// Waits for the process to exit, at most `limit`; its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let give_up = Instant::now() + limit;
        while Instant::now() < give_up {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait();
        if std::thread::panicking() {
            eprintln!("the binary ended with {status:?}; its log:");
            for line in self.log.lock().unwrap().iter() {
                eprintln!("  {line}");
            }
        }
    }
}
