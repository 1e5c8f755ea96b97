//! The processes of one run: a private redis-server (no persistence, so a
//! restart is a restart empty), a fresh Postgres database reached through
//! the nemesis' proxy, two gatekeepers (`dropgate serve` with the API and
//! the reaper only), one `dropgate worker` and one `dropgate reconcile`.
//! Every process logs to a file in the run's directory; all are stopped,
//! and the database dropped, when the run ends.

use crate::proxy::{Mode, Proxy};
use anyhow::{Context, bail};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "nemesis-admin-token";
pub const STOREFRONT_TOKEN: &str = "nemesis-storefront-token";
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 5432);

/// Where libfaketime may be installed (Debian, Ubuntu, from source).
const FAKETIME_LIBRARIES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];

pub fn faketime_library() -> Option<PathBuf> {
    FAKETIME_LIBRARIES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`) to a process.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// A child process that can be killed, paused and started again with the
/// same command line.
pub struct Service {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// The HTTP address, for the gatekeepers.
    pub addr: Option<SocketAddr>,
}

impl Service {
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let (stdout, stderr) = log_file(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it so its port is free again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (after SIGCONT, in case it is paused), then SIGKILL if it
    /// has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "CONT");
        signal(child.id(), "TERM");
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status if the process ended on its own (or was never started).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut() {
            None => Some("not running".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => None,
            },
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a run needs to start its processes.
pub struct Settings {
    pub bin: PathBuf,
    /// The run's directory: logs go to `logs/`.
    pub dir: PathBuf,
    pub seed: u64,
    /// libfaketime, preloaded into gatekeeper 2 so its clock can be skewed.
    pub faketime: Option<PathBuf>,
}

pub struct Topology {
    pub redis: Service,
    pub redis_port: u16,
    redis_dir: PathBuf,
    pub proxy: Proxy,
    pub database: String,
    /// gk1, gk2, worker, reconciler.
    pub services: Vec<Service>,
    /// A second worker the nemesis runs for a while (duplicate delivery).
    pub extra_worker: Option<Service>,
    /// libfaketime's offset file for gk2 (`+0`, `+5s`, `-5s`).
    pub clock_file: Option<PathBuf>,
    settings: Settings,
}

impl Topology {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let logs = settings.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let redis_dir =
            std::env::temp_dir().join(format!("nemesis-{}-{}", settings.seed, &suffix[..8]));
        std::fs::create_dir_all(&redis_dir)?;
        let redis_port = free_port()?;
        let mut redis = Service {
            name: "redis".to_owned(),
            program: PathBuf::from("redis-server"),
            args: [
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &redis_dir.to_string_lossy(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: Vec::new(),
            log: logs.join("redis.log"),
            child: None,
            addr: None,
        };
        redis.spawn()?;
        wait_for_port(redis_port, Duration::from_secs(10)).await?;

        let database = format!("nemesis_{}_{}", settings.seed, &suffix[..8]);
        create_database(&database).await?;
        let proxy = Proxy::start(SocketAddr::from(PG_ADDR)).await?;

        let database_url = format!("postgres://postgres@127.0.0.1:{}/{database}", proxy.port);
        let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
        let stores = vec![
            ("DATABASE_URL".to_owned(), database_url),
            ("REDIS_URL".to_owned(), redis_url),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ];
        let migrate = Command::new(&settings.bin)
            .arg("migrate")
            .envs(stores.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !migrate.status.success() {
            bail!(
                "dropgate migrate failed: {}",
                String::from_utf8_lossy(&migrate.stderr)
            );
        }

        let clock_file = settings
            .faketime
            .as_ref()
            .map(|_| settings.dir.join("clock"));
        if let Some(file) = &clock_file {
            std::fs::write(file, "+0")?;
        }
        let mut services = Vec::new();
        for n in 1..=2 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut env = stores.clone();
            env.extend([
                ("DROPGATE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
                (
                    "DROPGATE_STOREFRONT_TOKENS".to_owned(),
                    STOREFRONT_TOKEN.to_owned(),
                ),
                ("DROPGATE_CUSTOMER_RPS".to_owned(), "0".to_owned()),
            ]);
            if let (2, Some(library), Some(file)) = (n, &settings.faketime, &clock_file) {
                env.extend([
                    (
                        "LD_PRELOAD".to_owned(),
                        library.to_string_lossy().into_owned(),
                    ),
                    (
                        "FAKETIME_TIMESTAMP_FILE".to_owned(),
                        file.to_string_lossy().into_owned(),
                    ),
                    ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
                ]);
            }
            services.push(Service {
                name: format!("gk{n}"),
                program: settings.bin.clone(),
                args: vec![
                    "serve".into(),
                    "--no-worker".into(),
                    "--no-reconciler".into(),
                    "--listen".into(),
                    addr.to_string(),
                ],
                env,
                log: logs.join(format!("gk{n}.log")),
                child: None,
                addr: Some(addr),
            });
        }
        for (name, command) in [("worker", "worker"), ("reconciler", "reconcile")] {
            services.push(Service {
                name: name.to_owned(),
                program: settings.bin.clone(),
                args: vec![command.to_owned()],
                env: stores.clone(),
                log: logs.join(format!("{name}.log")),
                child: None,
                addr: None,
            });
        }
        let mut topology = Self {
            redis,
            redis_port,
            redis_dir,
            proxy,
            database,
            services,
            extra_worker: None,
            clock_file,
            settings,
        };
        for service in &mut topology.services {
            service.spawn()?;
        }
        for addr in topology.gatekeepers() {
            wait_until_ready(addr, Duration::from_secs(30)).await?;
        }
        Ok(topology)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.redis_port)
    }

    /// The database, directly (not through the proxy): for the checker.
    pub fn direct_database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    pub fn gatekeepers(&self) -> Vec<SocketAddr> {
        self.services.iter().filter_map(|s| s.addr).collect()
    }

    pub fn service(&mut self, name: &str) -> Option<&mut Service> {
        if name == "redis" {
            return Some(&mut self.redis);
        }
        if name == "worker2" {
            return self.extra_worker.as_mut();
        }
        self.services.iter_mut().find(|s| s.name == name)
    }

    pub fn pid(&mut self, name: &str) -> Option<u32> {
        self.service(name).and_then(|s| s.pid())
    }

    /// Redis, restarted empty on the same port.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.redis.spawn()?;
        wait_for_port(self.redis_port, Duration::from_secs(10)).await
    }

    /// A second commit worker, as another deployment's would be.
    pub fn start_extra_worker(&mut self) -> anyhow::Result<()> {
        let Some(worker) = self.services.iter().find(|s| s.name == "worker") else {
            bail!("no worker");
        };
        let mut extra = Service {
            name: "worker2".to_owned(),
            program: worker.program.clone(),
            args: worker.args.clone(),
            env: worker.env.clone(),
            log: self.settings.dir.join("logs").join("worker2.log"),
            child: None,
            addr: None,
        };
        extra.spawn()?;
        self.extra_worker = Some(extra);
        Ok(())
    }

    pub fn set_clock(&self, offset: &str) {
        if let Some(file) = &self.clock_file {
            let _ = std::fs::write(file, offset);
        }
    }

    /// Ends every fault: processes resumed, the link to Postgres clean, the
    /// clock true, the extra worker gone, whatever died started again.
    pub async fn heal(&mut self) -> Vec<String> {
        let mut restarted = Vec::new();
        self.proxy.set(Mode::Pass);
        self.set_clock("+0");
        if let Some(mut extra) = self.extra_worker.take() {
            extra.stop(Duration::from_secs(2)).await;
        }
        if let Some(pid) = self.redis.pid() {
            signal(pid, "CONT");
        }
        if self.redis.exited().is_some() && self.restart_redis().await.is_ok() {
            restarted.push("redis".to_owned());
        }
        for service in &mut self.services {
            if let Some(pid) = service.pid() {
                signal(pid, "CONT");
            }
            if let Some(status) = service.exited()
                && service.spawn().is_ok()
            {
                restarted.push(format!("{} ({status})", service.name));
            }
        }
        restarted
    }

    /// `dropgate audit` against the stores, directly: exit code and output.
    pub async fn audit(&self) -> (Option<i32>, String) {
        let mut command = tokio::process::Command::new(&self.settings.bin);
        command
            .arg("audit")
            .env("DATABASE_URL", self.direct_database_url())
            .env("REDIS_URL", self.redis_url())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(60), command.output()).await {
            Ok(Ok(output)) => (
                output.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            ),
            Ok(Err(error)) => (None, format!("audit did not run: {error}")),
            Err(_) => (None, "audit did not finish within 60 s".to_owned()),
        }
    }

    /// Stops everything and drops the database.
    pub async fn teardown(mut self) {
        if let Some(mut extra) = self.extra_worker.take() {
            extra.stop(Duration::from_secs(2)).await;
        }
        for service in &mut self.services {
            service.stop(Duration::from_secs(3)).await;
        }
        self.redis.kill();
        let _ = std::fs::remove_dir_all(&self.redis_dir);
        if let Err(error) = drop_database(&self.database).await {
            eprintln!("nemesis: could not drop {}: {error}", self.database);
        }
    }
}

async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if started.elapsed() > timeout {
            bail!("nothing listens on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn wait_until_ready(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = client
            .get(format!("http://{addr}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("the gatekeeper on {addr} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_database(name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .context("Postgres on 127.0.0.1:5432")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    Ok(())
}

pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
