//! Real processes for fault tests: a private redis-server that can be killed
//! and restarted empty (the one `dropgate dev` uses), dropgate itself as a
//! child process, and a TCP proxy in front of Postgres that can be cut
//! without touching the shared server.
#![allow(dead_code)]

pub use dropgate::dev::RedisServer;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A free local port (see [`dropgate::dev::free_port`]).
pub fn free_port() -> u16 {
    dropgate::dev::free_port().expect("a free port")
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private redis-server on a free port, in a temporary `--dir`.
pub async fn start_redis() -> RedisServer {
    RedisServer::start().await.expect("redis-server starts")
}

/// A replica of the server on `primary_port`, in sync before it returns.
pub async fn start_replica_of(primary_port: u16) -> RedisServer {
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port.to_string()])
        .await
        .expect("the replica starts");
    let client = redis::Client::open(replica.url()).expect("a redis url");
    for _ in 0..200 {
        let info: String = match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        if info.contains("master_link_status:up") {
            return replica;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica did not sync with 127.0.0.1:{primary_port}");
}

/// libfaketime, where Debian, Ubuntu or a source build put it; `None` when
/// it is not installed (`apt-get install faketime`).
pub fn faketime_library() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
}

/// The dropgate binary as a child process.
pub struct Dropgate {
    pub addr: SocketAddr,
    child: Child,
}

impl Dropgate {
    /// Runs `dropgate <args>` with `env`; waits for /healthz when it serves.
    pub fn spawn(args: &[&str], env: &[(&str, String)], serves: Option<SocketAddr>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dropgate"));
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("dropgate starts");
        let addr = serves.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        if serves.is_some() {
            wait_until("dropgate", Duration::from_secs(30), || answers(addr.port()));
        }
        Self { addr, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own; its exit code.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dropgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to Postgres that can be cut (every connection dropped, new
/// ones refused) and restored on the same port.
pub struct PgProxy {
    pub port: u16,
    tasks: Option<Arc<tokio::sync::Mutex<JoinSet<()>>>>,
}

impl PgProxy {
    pub async fn start() -> Self {
        let mut proxy = Self {
            port: free_port(),
            tasks: None,
        };
        proxy.restore().await;
        proxy
    }

    /// Points `config` at the same database, through this proxy.
    pub fn route(&self, config: &mut dropgate::config::ServeConfig) {
        let url = &mut config.stores.database_url;
        let database = url.rsplit('/').next().unwrap_or_default().to_owned();
        *url = format!("postgres://postgres@127.0.0.1:{}/{database}", self.port);
    }

    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy binds");
        let tasks = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let inner = tasks.clone();
        tasks.lock().await.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                inner.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    pub async fn cut(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.lock().await.abort_all();
        }
        // Let the aborted tasks drop their sockets and the listener.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
