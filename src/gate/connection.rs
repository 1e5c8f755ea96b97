//! The gate's one Redis connection, and what it learns from Redis's replies.
//!
//! Redis can be reachable and still unable to serve: out of memory under
//! `noeviction`, a primary demoted to replica by a failover (`READONLY`), a
//! replica cut from its primary (`MASTERDOWN`), loading its dataset
//! (`LOADING`), or stuck in a long script (`BUSY`). Every reply passes
//! through [`GateConnection`], which counts these (`dropgate_redis_errors_total`
//! by `kind`) and, on `READONLY`, opens a fresh connection: the address the
//! gate was given (a DNS name, a virtual IP, a proxy) now leads to the new
//! primary, while the old socket would stay with the demoted one forever.

use super::{Gate, GateError};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::{Arc, RwLock};

/// Replies with which a reachable Redis says it cannot serve now. Each is
/// answered `503 unavailable` with `Retry-After`, never 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// `OOM`: maxmemory reached under `noeviction`; writes are refused.
    OutOfMemory,
    /// `READONLY`: this server is a replica now (a failover demoted it).
    ReadOnly,
    /// `MASTERDOWN`: a replica lost its primary and will not serve stale data.
    MasterDown,
    /// `LOADING`: the dataset is being loaded into memory.
    Loading,
    /// `BUSY`: a script runs past `busy-reply-threshold`.
    Busy,
    /// `TRYAGAIN` / `CLUSTERDOWN`: Redis Cluster is resharding or down.
    Cluster,
}

impl Trouble {
    /// The trouble a Redis error code names, if it is one.
    pub fn of_code(code: &str) -> Option<Self> {
        Some(match code {
            "OOM" => Self::OutOfMemory,
            "READONLY" => Self::ReadOnly,
            "MASTERDOWN" => Self::MasterDown,
            "LOADING" => Self::Loading,
            "BUSY" => Self::Busy,
            "TRYAGAIN" | "CLUSTERDOWN" => Self::Cluster,
            _ => return None,
        })
    }

    pub fn of(error: &redis::RedisError) -> Option<Self> {
        error.code().and_then(Self::of_code)
    }

    /// The `kind` label of `dropgate_redis_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::OutOfMemory => "oom",
            Self::ReadOnly => "readonly",
            Self::MasterDown => "masterdown",
            Self::Loading => "loading",
            Self::Busy => "busy",
            Self::Cluster => "cluster",
        }
    }

    /// How `/readyz` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::OutOfMemory => "out of memory",
            Self::ReadOnly => "read-only (a replica)",
            Self::MasterDown => "replica without its primary",
            Self::Loading => "loading its dataset",
            Self::Busy => "busy running a script",
            Self::Cluster => "cluster unavailable",
        }
    }
}

/// A shared, auto-pipelined Redis connection that follows failovers. Cheap
/// to clone; every clone uses the same connection.
#[derive(Clone)]
pub struct GateConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// Kept to open a fresh connection after `READONLY`.
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection in use and its generation, so that many requests
    /// seeing the same `READONLY` replace the connection once, not once each.
    current: RwLock<(u64, ConnectionManager)>,
}

impl GateConnection {
    /// Connects lazily: the first command connects, so a server can start
    /// (and report not ready) while Redis is down.
    pub fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, redis::RedisError> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: RwLock::new((0, manager)),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        match self.shared.current.read() {
            Ok(current) => current.clone(),
            // A writer panicked mid-swap; the value is still a whole connection.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a trouble reply; on `READONLY`, replaces the connection
    /// `generation` (unless another request already did).
    fn observe(&self, generation: u64, code: Option<&str>) {
        let Some(trouble) = code.and_then(Trouble::of_code) else {
            return;
        };
        metrics::counter!(crate::telemetry::metric::REDIS_ERRORS_TOTAL, "kind" => trouble.label())
            .increment(1);
        if trouble == Trouble::ReadOnly {
            self.reconnect(generation);
        }
    }

    fn reconnect(&self, generation: u64) {
        let mut current = match self.shared.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            self.shared.config.clone(),
        ) {
            Ok(fresh) => {
                *current = (generation + 1, fresh);
                tracing::warn!(
                    "redis answered READONLY (a replica now): reconnecting to follow the failover"
                );
            }
            Err(error) => tracing::error!(%error, "cannot open a new redis connection"),
        }
    }
}

/// The error code of a reply, whether it came as an error or as an error
/// value (a pipeline carries one per command).
fn reply_code(value: &Value) -> Option<&str> {
    match value {
        Value::ServerError(error) => Some(error.code()),
        _ => None,
    }
}

impl ConnectionLike for GateConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let result = conn.req_packed_command(cmd).await;
            match &result {
                Ok(value) => self.observe(generation, reply_code(value)),
                Err(error) => self.observe(generation, error.code()),
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Ok(values) => {
                    if let Some(code) = values.iter().find_map(reply_code) {
                        self.observe(generation, Some(code));
                    }
                }
                Err(error) => self.observe(generation, error.code()),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

impl Gate {
    /// Readiness: writes a short-lived probe key, then reads the gate epoch.
    /// The write is what finds a Redis that answers reads but refuses
    /// writes (out of memory, read-only); `None` when the gate is not built.
    pub async fn probe(&self) -> Result<Option<i64>, GateError> {
        let mut conn = self.conn.clone();
        let () = redis::cmd("SET")
            .arg(self.keys().probe())
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        self.epoch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, detail: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
    }

    #[test]
    fn trouble_codes_are_recognised() {
        let cases = [
            ("OOM", Some(Trouble::OutOfMemory)),
            ("READONLY", Some(Trouble::ReadOnly)),
            ("MASTERDOWN", Some(Trouble::MasterDown)),
            ("LOADING", Some(Trouble::Loading)),
            ("BUSY", Some(Trouble::Busy)),
            ("TRYAGAIN", Some(Trouble::Cluster)),
            ("CLUSTERDOWN", Some(Trouble::Cluster)),
            ("ERR", None),
            ("NOSCRIPT", None),
            ("WRONGTYPE", None),
        ];
        for (code, trouble) in cases {
            assert_eq!(Trouble::of_code(code), trouble, "{code}");
        }
    }

    /// Errors as the client library builds them from the server's replies:
    /// the known kinds (`READONLY`, `LOADING`, …) and the codes it does not
    /// know (`OOM`, `BUSY`) alike.
    #[test]
    fn parsed_server_errors_are_unavailability() {
        let replies: [&[u8]; 6] = [
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            b"-READONLY You can't write against a read only replica.\r\n",
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            b"-LOADING Redis is loading the dataset in memory\r\n",
            b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n",
            b"-OOM command not allowed when used memory > 'maxmemory'. script: 1f2e, on @user_script:12.\r\n",
        ];
        for reply in replies {
            let value = redis::parse_redis_value(reply).unwrap();
            let error = value.extract_error().unwrap_err();
            let gate = GateError::Redis(error);
            assert!(gate.is_unavailable(), "{gate}");
            assert!(gate.trouble().is_some(), "{gate}");
        }
        let bug = GateError::Redis(server_error("ERR", "wrong number of arguments"));
        assert!(!bug.is_unavailable());
        assert_eq!(bug.trouble(), None);
        assert_eq!(
            GateError::Redis(server_error("OOM", "no")).trouble(),
            Some(Trouble::OutOfMemory)
        );
    }
}
