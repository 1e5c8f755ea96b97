//! A private redis-server: `dropgate dev` starts one when no Redis is
//! around, and the tests start one they can kill and restart. Each gets a
//! free port and a temporary `--dir`, so nothing lands in the working
//! directory, and persists nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::{
    ProcessGuard, ServiceGuard, TempDir, find_in_path, free_port, spawn_logged, wait_until_ready,
};

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server child process, stopped (SIGTERM) and its directory
/// removed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Kept across restarts, so clients reconnect to the same address.
    port: u16,
    bin: PathBuf,
    /// Arguments after the defaults (e.g. `--replicaof`), for each start.
    extra: Vec<String>,
    /// The running server and its directory; `None` once killed.
    running: Option<ServiceGuard>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with more arguments for redis-server.
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let bin = find_in_path("redis-server").context(
            "no redis-server on PATH: install it (apt-get install redis-server) \
             or run `docker compose up -d redis`",
        )?;
        let mut server = Self {
            port: free_port()?,
            bin,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            running: None,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Where the running server may write; `None` once killed.
    pub fn dir(&self) -> Option<&Path> {
        self.running.as_ref().map(|guard| guard.dir.path())
    }

    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|guard| guard.process.child.id())
    }

    /// Starts (again) on the same port, empty: nothing was persisted.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let dir = TempDir::create(&std::env::temp_dir(), "redis")?;
        let mut guard = self.spawn(dir, &[])?;
        let addr = self.addr();
        wait_until_ready(&mut guard, START_TIMEOUT, || pings(addr, PROBE_TIMEOUT)).await?;
        self.running = Some(guard);
        Ok(())
    }

    /// Kills the server as a crash would and starts it again on the same
    /// port and directory with `extra` arguments as well, so it loads what
    /// was saved there (`SAVE`). Returns once the port takes connections,
    /// which may be while Redis still answers `-LOADING`.
    pub async fn reload_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let ServiceGuard {
            mut process, dir, ..
        } = self.running.take().context("redis-server is not running")?;
        let _ = process.child.kill();
        let _ = process.child.wait();
        drop(process);
        let mut guard = self.spawn(dir, extra)?;
        let addr = self.addr();
        wait_until_ready(&mut guard, START_TIMEOUT, || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await?;
        self.running = Some(guard);
        Ok(())
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A redis-server in `dir` with the defaults, `self.extra` and `more`.
    fn spawn(&self, dir: TempDir, more: &[&str]) -> anyhow::Result<ServiceGuard> {
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            // Nothing in a throwaway store is worth persisting.
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(&self.extra)
            .args(more)
            .current_dir(dir.path());
        let child =
            spawn_logged(cmd, &log).with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(ServiceGuard {
            process: ProcessGuard {
                name: "redis-server",
                child,
                stop_signal: "TERM",
                pid_file: None,
            },
            log,
            dir,
        })
    }

    /// SIGKILL, as a crash would: Redis loses everything it had.
    pub fn kill(&mut self) {
        if let Some(mut guard) = self.running.take() {
            let _ = guard.process.child.kill();
            let _ = guard.process.child.wait();
        }
    }
}

/// True only if `addr` answers a RESP `PING` with `+PONG`; a Redis that wants
/// AUTH answers `-NOAUTH` and so does not count as usable.
pub(super) async fn pings(addr: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn answers_writes_only_in_its_dir_and_is_gone_after_drop() -> anyhow::Result<()> {
        let server = RedisServer::start().await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(pings(addr, PROBE_TIMEOUT).await);
        let dir = server.dir().context("running")?.to_path_buf();
        let pid = server.pid().context("running")?;
        assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
        let mut conn = redis::Client::open(server.url())?
            .get_multiplexed_async_connection()
            .await?;
        let (_, configured): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query_async(&mut conn)
            .await?;
        assert_eq!(Path::new(&configured), dir);
        drop(conn);

        drop(server);

        assert!(!pings(addr, PROBE_TIMEOUT).await);
        assert!(TcpStream::connect(addr).await.is_err(), "port still open");
        assert!(!process_alive(pid), "redis-server {pid} still running");
        assert!(!dir.exists(), "{} not removed", dir.display());
        Ok(())
    }

    #[tokio::test]
    async fn a_killed_server_restarts_empty_on_the_same_port() -> anyhow::Result<()> {
        let mut server = RedisServer::start().await?;
        let client = redis::Client::open(server.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut conn)
            .await?;
        let (port, first_dir) = (server.port(), server.dir().context("running")?.to_owned());

        server.kill();
        assert_eq!(server.dir(), None);
        assert!(!first_dir.exists(), "{} not removed", first_dir.display());
        server.restart().await?;

        assert_eq!(server.port(), port);
        let mut conn = client.get_multiplexed_async_connection().await?;
        let value: Option<String> = redis::cmd("GET").arg("k").query_async(&mut conn).await?;
        assert_eq!(value, None);
        Ok(())
    }
}
