//! Backing stores for `dropgate dev`.
//!
//! This module owns finding a Redis and a Postgres for a zero-setup local run:
//! it prefers what the environment names (`REDIS_URL`, `DATABASE_URL`), then
//! servers already listening on their default local ports, and only then
//! starts private throwaway servers from binaries found on the machine. It
//! owns those child processes and their temp dirs: both go away when the
//! returned [`Services`] is dropped.

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sqlx::{Connection, PgConnection};

use super::process::{
    ProcessGuard, ServiceGuard, TempDir, find_in_path, free_port, is_executable, path_dirs,
    spawn_logged, wait_until_ready,
};
use super::redis_server::{self, RedisServer};

const LOCAL_REDIS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6379);
const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const LOCAL_PG_PORT: u16 = 5432;
const PG_SUPERUSER: &str = "postgres";
/// Where Debian/Ubuntu packages put versioned server binaries (not on PATH).
const PG_VERSIONED_ROOT: &str = "/usr/lib/postgresql";

const REDIS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PG_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PG_START_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the stores for a dev run live, and ownership of any servers this
/// module started for it.
#[derive(Debug)]
pub struct Services {
    pub redis_url: String,
    pub database_url: String,
    /// human-readable lines describing where each came from, e.g. "redis: using 127.0.0.1:6379" or "postgres: started private server in /tmp/... on port 54xx"
    pub notes: Vec<String>,
    /// Servers started for this run, dropped with `Services`: each stops
    /// and its dir is removed. Redis first, as Postgres outlives it below.
    redis: Option<RedisServer>,
    postgres: Option<ServiceGuard>,
}

impl Services {
    /// Whether dropping this stops any server (so callers can say so).
    pub fn started_any(&self) -> bool {
        self.redis.is_some() || self.postgres.is_some()
    }
}

/// Finds or starts Redis and Postgres, and makes sure `database_name` exists
/// on any Postgres it did not get from `DATABASE_URL`.
pub async fn ensure_services(database_name: &str) -> anyhow::Result<Services> {
    let (redis, postgres) = tokio::try_join!(
        ensure_redis(env_url("REDIS_URL")),
        ensure_postgres(env_url("DATABASE_URL"), database_name),
    )?;
    Ok(Services {
        redis_url: redis.url,
        database_url: postgres.url,
        notes: vec![redis.note, postgres.note],
        redis: redis.guard,
        postgres: postgres.guard,
    })
}

/// One store, resolved; `guard` owns the server if this module started it.
#[derive(Debug)]
struct Found<G> {
    url: String,
    note: String,
    guard: Option<G>,
}

fn env_url(name: &str) -> Option<String> {
    // An exported-but-empty variable is almost always a shell leftover, not a
    // request to connect to "".
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

// ---------------------------------------------------------------- Redis

async fn ensure_redis(from_env: Option<String>) -> anyhow::Result<Found<RedisServer>> {
    if let Some(url) = from_env {
        // The URL may carry a password, so the note does not echo it.
        return Ok(Found {
            url,
            note: "redis: using REDIS_URL from the environment".to_owned(),
            guard: None,
        });
    }
    if redis_server::pings(LOCAL_REDIS, REDIS_PROBE_TIMEOUT).await {
        return Ok(Found {
            url: LOCAL_REDIS_URL.to_owned(),
            note: format!("redis: using {LOCAL_REDIS}"),
            guard: None,
        });
    }
    if find_in_path("redis-server").is_none() {
        bail!(
            "no Redis at {LOCAL_REDIS} and no redis-server on PATH: install it \
             (apt-get install redis-server) or run `docker compose up -d redis`, \
             or point REDIS_URL at a Redis"
        );
    }
    let server = RedisServer::start().await?;
    let note = format!(
        "redis: started private redis-server on 127.0.0.1:{} (dir {})",
        server.port(),
        server.dir().unwrap_or(Path::new("?")).display()
    );
    Ok(Found {
        url: server.url(),
        note,
        guard: Some(server),
    })
}

// ---------------------------------------------------------------- Postgres

async fn ensure_postgres(
    from_env: Option<String>,
    database_name: &str,
) -> anyhow::Result<Found<ServiceGuard>> {
    if let Some(url) = from_env {
        return Ok(Found {
            url,
            note: "postgres: using DATABASE_URL from the environment".to_owned(),
            guard: None,
        });
    }
    if database_name.is_empty() {
        bail!("the dev database name must not be empty");
    }
    match pg_connect(&pg_url(LOCAL_PG_PORT, PG_SUPERUSER), PG_PROBE_TIMEOUT).await {
        // The database itself is created by the migration (ledger::migrate).
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(Found {
                url: pg_url(LOCAL_PG_PORT, database_name),
                note: format!("postgres: using 127.0.0.1:{LOCAL_PG_PORT}"),
                guard: None,
            });
        }
        Err(e) => tracing::debug!(error = %e, "no usable Postgres on the default port"),
    }
    let Some(bins) = find_postgres_bins() else {
        bail!(
            "no Postgres accepting user `{PG_SUPERUSER}` at 127.0.0.1:{LOCAL_PG_PORT} and no \
             initdb/postgres binaries on PATH or under {PG_VERSIONED_ROOT}/*/bin: install it \
             (apt-get install postgresql) or run `docker compose up -d postgres`, or point \
             DATABASE_URL at a Postgres"
        );
    };
    let (guard, port) = start_private_postgres(&bins).await?;
    let conn = pg_connect(&pg_url(port, PG_SUPERUSER), PG_PROBE_TIMEOUT)
        .await
        .context("connecting to the private Postgres")?;
    let _ = conn.close().await;
    let note = format!(
        "postgres: started private server in {} on port {port}",
        guard.dir.path().display()
    );
    Ok(Found {
        url: pg_url(port, database_name),
        note,
        guard: Some(guard),
    })
}

fn pg_url(port: u16, database: &str) -> String {
    format!(
        "postgres://{PG_SUPERUSER}@127.0.0.1:{port}/{}",
        percent_encode(database)
    )
}

async fn pg_connect(url: &str, timeout: Duration) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(timeout, PgConnection::connect(url))
        .await
        .map_err(|_| anyhow!("connecting timed out after {timeout:?}"))?
        .map_err(Into::into)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PgBins {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl PgBins {
    /// Both from one dir, because an initdb from one major version makes a
    /// data dir another major version's server refuses to open.
    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        (is_executable(&initdb) && is_executable(&postgres)).then_some(Self { initdb, postgres })
    }
}

fn find_postgres_bins() -> Option<PgBins> {
    path_dirs()
        .into_iter()
        .chain(versioned_bin_dirs(Path::new(PG_VERSIONED_ROOT)))
        .find_map(|dir| PgBins::in_dir(&dir))
}

/// `<root>/<version>/bin`, highest version first.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let key = version_key(entry.file_name().to_str()?)?;
            Some((key, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// "9.6" -> [9, 6]; names that are not versions are not candidates.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// How to run Postgres' own binaries, which refuse to run as root.
#[derive(Debug)]
enum RunAs {
    CurrentUser,
    Runuser(PathBuf),
    Su(PathBuf),
}

impl RunAs {
    async fn detect() -> anyhow::Result<Self> {
        if !running_as_root().await {
            return Ok(Self::CurrentUser);
        }
        if !user_exists(PG_SUPERUSER).await {
            bail!(
                "running as root and there is no `{PG_SUPERUSER}` user to run a private Postgres as \
                 (Postgres refuses to run as root): create one (useradd --system {PG_SUPERUSER}), run \
                 as a normal user, or point DATABASE_URL at a Postgres"
            );
        }
        if let Some(runuser) = find_in_path("runuser") {
            return Ok(Self::Runuser(runuser));
        }
        if let Some(su) = find_in_path("su") {
            return Ok(Self::Su(su));
        }
        bail!(
            "running as root and neither runuser nor su is on PATH to run a private Postgres as \
             `{PG_SUPERUSER}`: run as a normal user or point DATABASE_URL at a Postgres"
        )
    }

    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        match self {
            Self::CurrentUser => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Self::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", PG_SUPERUSER, "--"]).arg(program).args(args);
                cmd
            }
            Self::Su(su) => {
                // `exec` so su's child is the server itself, not a shell
                // that would swallow our stop signal.
                let mut script = String::from("exec ");
                script.push_str(&shell_quote(&program.to_string_lossy()));
                for arg in args {
                    script.push(' ');
                    script.push_str(&shell_quote(&arg.to_string_lossy()));
                }
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c"])
                    .arg(script)
                    .arg(PG_SUPERUSER);
                cmd
            }
        }
    }

    async fn give_dir_to_postgres(&self, dir: &Path) -> anyhow::Result<()> {
        if matches!(self, Self::CurrentUser) {
            return Ok(());
        }
        let out = tokio::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_SUPERUSER}:{PG_SUPERUSER}"))
            .arg(dir)
            .output()
            .await
            .context("running chown")?;
        if !out.status.success() {
            bail!(
                "chown -R {PG_SUPERUSER}:{PG_SUPERUSER} {} failed ({}): {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// /etc/passwd first, so a bare PATH cannot make the user look missing;
/// then id(1), which also sees NSS users (LDAP and the like).
async fn user_exists(user: &str) -> bool {
    let prefix = format!("{user}:");
    if fs::read_to_string("/etc/passwd").is_ok_and(|p| p.lines().any(|l| l.starts_with(&prefix))) {
        return true;
    }
    tokio::process::Command::new("id")
        .args(["-u", user])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Effective uid 0, which is what Postgres checks.
async fn running_as_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(euid) = effective_uid_from_status(&status)
    {
        return euid == 0;
    }
    match tokio::process::Command::new("id").arg("-u").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim() == "0",
        Err(_) => false,
    }
}

/// `Uid:` lists real, effective, saved and filesystem uids.
fn effective_uid_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

async fn start_private_postgres(bins: &PgBins) -> anyhow::Result<(ServiceGuard, u16)> {
    let run_as = RunAs::detect().await?;
    // $TMPDIR may sit under root's home, which the postgres user cannot enter.
    let base = match run_as {
        RunAs::CurrentUser => std::env::temp_dir(),
        _ => PathBuf::from("/tmp"),
    };
    let dir = TempDir::create(&base, "postgres")?;
    let data = dir.path().join("data");
    let log = dir.path().join("postgres.log");
    run_as.give_dir_to_postgres(dir.path()).await?;

    let initdb_args: Vec<OsString> = vec![
        "-D".into(),
        data.clone().into(),
        "-U".into(),
        PG_SUPERUSER.into(),
        "--auth=trust".into(),
        // Pinned so initdb does not trip over whatever locale the shell has.
        "--encoding=UTF8".into(),
        "--locale=C".into(),
        // A throwaway cluster gains nothing from fsyncing its template files.
        "--no-sync".into(),
    ];
    let mut initdb = run_as.command(&bins.initdb, &initdb_args);
    // Under runuser the cwd is inherited, and root's may be unreadable.
    initdb.current_dir(dir.path());
    let mut initdb = tokio::process::Command::from(initdb);
    initdb.kill_on_drop(true);
    let out = tokio::time::timeout(INITDB_TIMEOUT, initdb.output())
        .await
        .map_err(|_| anyhow!("initdb did not finish within {INITDB_TIMEOUT:?}"))?
        .with_context(|| format!("running {}", bins.initdb.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            bins.initdb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    let port = free_port()?;
    let server_args: Vec<OsString> = vec![
        "-D".into(),
        data.clone().into(),
        "-p".into(),
        port.to_string().into(),
        "-k".into(),
        dir.path().into(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "fsync=off".into(),
    ];
    let mut cmd = run_as.command(&bins.postgres, &server_args);
    cmd.current_dir(dir.path());
    let child =
        spawn_logged(cmd, &log).with_context(|| format!("starting {}", bins.postgres.display()))?;
    let mut guard = ServiceGuard {
        process: ProcessGuard {
            name: "postgres",
            child,
            // SIGTERM is Postgres' "smart" shutdown, which waits for every
            // client to hang up; SIGINT is the fast one we want.
            stop_signal: "INT",
            // Under runuser/su our child is the wrapper, so the postmaster
            // is signalled directly by the pid it records.
            pid_file: Some(data.join("postmaster.pid")),
        },
        log,
        dir,
    };
    let url = pg_url(port, PG_SUPERUSER);
    wait_until_ready(&mut guard, PG_START_TIMEOUT, || async {
        match pg_connect(&url, PG_PROBE_TIMEOUT).await {
            Ok(conn) => {
                let _ = conn.close().await;
                true
            }
            Err(_) => false,
        }
    })
    .await?;
    Ok((guard, port))
}

// ---------------------------------------------------------------- small helpers

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::super::process::{STOP_TIMEOUT, read_pid_file};
    use super::*;
    use std::time::Instant;

    fn process_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn private_postgres_answers_and_is_gone_after_drop() -> anyhow::Result<()> {
        let bins = find_postgres_bins().context("no initdb/postgres binaries found")?;
        let (guard, port) = start_private_postgres(&bins).await?;
        let dir = guard.dir.path().to_path_buf();
        let postmaster =
            read_pid_file(&dir.join("data/postmaster.pid")).context("no postmaster.pid")?;

        let url = pg_url(port, "dropgate_services_test");
        crate::ledger::migrate(&url, PG_PROBE_TIMEOUT).await?;
        // Idempotent: the second run finds the database migrated.
        crate::ledger::migrate(&url, PG_PROBE_TIMEOUT).await?;
        let mut conn = pg_connect(&url, PG_PROBE_TIMEOUT).await?;
        conn.ping().await?;
        // Left open on purpose: fast shutdown must not wait for clients.

        let started = Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < STOP_TIMEOUT,
            "stop fell back to killing"
        );
        drop(conn);

        assert!(
            pg_connect(&pg_url(port, PG_SUPERUSER), PG_PROBE_TIMEOUT)
                .await
                .is_err()
        );
        assert!(
            !process_alive(postmaster),
            "postmaster {postmaster} still running"
        );
        assert!(!dir.exists(), "{} not removed", dir.display());
        Ok(())
    }

    #[tokio::test]
    async fn redis_from_env_is_used_verbatim() -> anyhow::Result<()> {
        let url = "redis://:secret@example.invalid:6380/3".to_owned();
        let found = ensure_redis(Some(url.clone())).await?;
        assert_eq!(found.url, url);
        assert!(found.guard.is_none());
        assert!(!found.note.contains("secret"));
        Ok(())
    }

    #[tokio::test]
    async fn postgres_from_env_is_used_verbatim() -> anyhow::Result<()> {
        let url = "postgres://u:secret@example.invalid/x".to_owned();
        let found = ensure_postgres(Some(url.clone()), "dropgate").await?;
        assert_eq!(found.url, url);
        assert!(found.guard.is_none());
        assert!(!found.note.contains("secret"));
        Ok(())
    }

    #[tokio::test]
    async fn redis_without_env_yields_a_redis_that_pings() -> anyhow::Result<()> {
        let found = ensure_redis(None).await?;
        let hostport = found
            .url
            .strip_prefix("redis://")
            .and_then(|rest| rest.split('/').next())
            .context("unexpected url")?;
        let addr: SocketAddr = hostport.parse()?;
        assert!(
            redis_server::pings(addr, REDIS_PROBE_TIMEOUT).await,
            "{}",
            found.note
        );
        Ok(())
    }

    #[test]
    fn versioned_dirs_sort_highest_first() -> anyhow::Result<()> {
        let root = TempDir::create(&std::env::temp_dir(), "versions-test")?;
        for name in ["9.6", "15", "10", "16", "common"] {
            fs::create_dir(root.path().join(name))?;
        }
        let found: Vec<PathBuf> = versioned_bin_dirs(root.path());
        let expected: Vec<PathBuf> = ["16", "15", "10", "9.6"]
            .iter()
            .map(|v| root.path().join(v).join("bin"))
            .collect();
        assert_eq!(found, expected);
        Ok(())
    }

    #[test]
    fn uid_is_read_from_proc_status() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(effective_uid_from_status(status), Some(0));
        assert_eq!(effective_uid_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn names_are_quoted_for_url_and_shell() {
        assert_eq!(
            pg_url(5432, "dropgate"),
            "postgres://postgres@127.0.0.1:5432/dropgate"
        );
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
