//! A PostgreSQL server of the test's own, from the installed binaries: its
//! own data directory and port, so a test can stop it (an outage), start it
//! again, and read its log, without disturbing the shared server the rest
//! of the suite runs against. Removed when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The shared server's port: never ours.
const SHARED_PORT: u16 = 5432;

/// A running (or deliberately stopped) server; stopped and removed on drop.
pub struct PrivatePg {
    cluster: Cluster,
}

/// Where a server lives and how to run its tools: cheap to clone into a
/// blocking task.
#[derive(Clone)]
struct Cluster {
    /// Holds everything: `data/` and `server.log`.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// initdb refuses to run as root, and CI runs tests as root: the server
    /// then runs as the `postgres` system user.
    as_postgres: bool,
    /// Whether it serves TLS, with `server.crt` and `server.key` of `dir`.
    tls: bool,
}

impl PrivatePg {
    /// Creates a cluster (trust authentication, no fsync: a crash of the
    /// machine is not what these tests are about) and starts it on a free
    /// port of 127.0.0.1.
    pub async fn start() -> Self {
        let cluster = tokio::task::spawn_blocking(|| Cluster::create(None))
            .await
            .expect("starting the private PostgreSQL");
        Self { cluster }
    }

    /// [`start`](Self::start), serving TLS (and plaintext: clients choose)
    /// with this certificate chain and private key (PEM).
    pub async fn start_with_tls(cert_pem: String, key_pem: String) -> Self {
        let cluster = tokio::task::spawn_blocking(|| Cluster::create(Some((cert_pem, key_pem))))
            .await
            .expect("starting the private PostgreSQL");
        Self { cluster }
    }

    /// Starts the stopped server again, on the same port and data.
    pub async fn restart(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || {
            assert!(
                cluster.try_start(),
                "the private PostgreSQL would not start again:\n{}",
                cluster.log()
            )
        })
        .await
        .unwrap();
    }

    /// Stops the server the hard way (`-m immediate`: backends killed, as
    /// in a crash; the next start recovers from the WAL). Connections to it
    /// fail until [`restart`].
    ///
    /// [`restart`]: Self::restart
    pub async fn stop(&self) {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || {
            let out = cluster.pg_ctl(&["stop", "-w", "-t", "60", "-m", "immediate"]);
            assert!(out.status.success(), "pg_ctl stop: {}", describe(&out));
        })
        .await
        .unwrap();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.cluster.port))
    }

    /// The URL of database `db` on this server, connecting directly.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{}/{db}", self.addr())
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.cluster.log()
    }

    /// The lines of the log that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .pg_ctl(&["stop", "-w", "-t", "30", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
}

impl Cluster {
    fn create(tls: Option<(String, String)>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ccc-private-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir for the private PostgreSQL");
        let mut cluster = Self {
            dir,
            bin: bin_dir(),
            port: 0,
            as_postgres: running_as_root(),
            tls: tls.is_some(),
        };
        if let Some((cert, key)) = tls {
            std::fs::write(cluster.dir.join("server.crt"), cert).expect("server.crt");
            // PostgreSQL refuses a key others may read.
            let key_file = cluster.dir.join("server.key");
            std::fs::write(&key_file, key).expect("server.key");
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .expect("server.key's mode");
        }
        if cluster.as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir));
        }
        let data = cluster.data();
        run(&mut cluster.command(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        ));
        // Another process may take the port between our probe and the
        // server's bind; a few tries make that harmless.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
        }
        let log = cluster.log();
        let _ = std::fs::remove_dir_all(&cluster.dir);
        panic!("the private PostgreSQL would not start:\n{log}");
    }

    fn try_start(&self) -> bool {
        assert_ne!(self.port, SHARED_PORT, "never the shared server's port");
        // Only TCP on 127.0.0.1, and the socket file in our own directory,
        // so nothing collides with the shared server. synchronous_commit
        // stays on: an acknowledged commit must survive an immediate stop.
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off -c max_connections=60",
            self.port,
            path_str(&self.dir)
        );
        if self.tls {
            options += &format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                path_str(&self.dir)
            );
        }
        let log = self.log_file();
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            path_str(&log),
            "-o",
            &options,
        ])
        .status
        .success()
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["-D", path_str(&data)];
        all.extend_from_slice(args);
        self.command("pg_ctl", &all).output().expect("pg_ctl runs")
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args).current_dir(&self.dir);
        cmd
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_file()).unwrap_or_default()).into_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

/// The newest installed PostgreSQL's binaries (Debian's layout).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
        .1
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port != SHARED_PORT {
            return port;
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
