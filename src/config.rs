//! Configuration: every variable of shared/API.md, each also a flag. Values
//! are checked here, so a bad one stops start-up with one line naming it.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/dropgate";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_KEY_PREFIX: &str = "dg";
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
pub const DEFAULT_CUSTOMER_RPS: u32 = 10;
pub const DEFAULT_REDIS_WAIT_TIMEOUT_MS: u64 = 100;
/// A gatekeeper's `sold_out` from its own flag is at most this old (ms),
/// when no message cleared it sooner.
pub const DEFAULT_SOLD_OUT_CACHE_MS: u64 = 250;

#[derive(Debug, Parser)]
#[command(
    name = "dropgate",
    version,
    about = "Flash-sale gatekeeper: Redis decides fast, Postgres remembers forever."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API, with the commit worker and the reaper in the same process.
    Serve(Box<ServeConfig>),
    /// Zero-setup local run: find or start Redis and Postgres, migrate, seed a
    /// demo drop, serve.
    Dev(DevConfig),
    /// Create the database if missing and apply migrations.
    Migrate(StoreConfig),
    /// Run only the commit worker: stream events into the ledger.
    Worker(StoreConfig),
    /// Run only the reconciler: measure and repair drift, rebuild a lost gate.
    Reconcile(StoreConfig),
    /// Check every invariant across Redis and Postgres; exit 1 on a breach.
    Audit(AuditConfig),
    /// Inspect and change SKUs, straight through the stores.
    Skus(SkusConfig),
    /// Inspect holds, straight through the stores.
    Holds(HoldsConfig),
    /// Inspect, retry or void events the ledger set aside.
    DeadLetters(DeadLettersConfig),
}

#[derive(Debug, Clone, Args)]
pub struct DeadLettersConfig {
    #[command(flatten)]
    pub stores: StoreConfig,
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters as JSON lines, open ones first.
    List {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Apply a dead letter now (its text with control characters escaped).
    Retry {
        event_id: uuid::Uuid,
        /// Why; kept with the dead letter.
        #[arg(long)]
        note: String,
    },
    /// Never apply it; records a `reconcile` movement saying so.
    Void {
        event_id: uuid::Uuid,
        /// Why; kept with the dead letter and in the movement.
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SkusConfig {
    #[command(flatten)]
    pub stores: StoreConfig,
    #[command(subcommand)]
    pub command: SkusCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SkusCommand {
    /// List every SKU with its figures, as JSON lines.
    List,
    /// Create a SKU or replace its stock and settings (like PUT /v1/skus/{sku}).
    Put {
        /// SKU id, 1..64 characters of [A-Za-z0-9._-].
        sku: String,
        /// Units on hand.
        #[arg(long)]
        on_hand: i64,
        /// Units one customer may hold or buy; 0 = no limit.
        #[arg(long)]
        per_customer_limit: Option<i64>,
        /// How long a hold lives, 1000..86400000 ms (default 600000).
        #[arg(long)]
        hold_ttl_ms: Option<i64>,
        /// How often a hold may be extended, 0..10 (default 1).
        #[arg(long)]
        max_extensions: Option<i64>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct HoldsConfig {
    #[command(flatten)]
    pub stores: StoreConfig,
    #[command(subcommand)]
    pub command: HoldsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum HoldsCommand {
    /// Show one hold as the API would, as JSON.
    Show {
        /// The hold id (a UUID).
        hold_id: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AuditConfig {
    #[command(flatten)]
    pub stores: StoreConfig,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the two stores are.
#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// Postgres ledger; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL",
          default_value = DEFAULT_DATABASE_URL, value_parser = parse_database_url,
          hide_env_values = true)]
    pub database_url: String,

    /// Redis gate.
    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL",
          default_value = DEFAULT_REDIS_URL, value_parser = parse_redis_url,
          hide_env_values = true)]
    pub redis_url: String,

    /// Redis key prefix, so several deployments or tests share one Redis.
    #[arg(long, env = "DROPGATE_KEY_PREFIX", value_name = "DROPGATE_KEY_PREFIX",
          default_value = DEFAULT_KEY_PREFIX, value_parser = parse_key_prefix)]
    pub key_prefix: String,

    /// Timeout of every Redis and Postgres call, in milliseconds.
    #[arg(long, env = "DROPGATE_STORE_TIMEOUT_MS", value_name = "DROPGATE_STORE_TIMEOUT_MS",
          default_value_t = DEFAULT_STORE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub store_timeout_ms: u64,
}

impl Default for StoreConfig {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            store_timeout_ms: DEFAULT_STORE_TIMEOUT_MS,
        }
    }
}

impl StoreConfig {
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub stores: StoreConfig,

    /// HTTP address.
    #[arg(long, env = "DROPGATE_LISTEN", value_name = "DROPGATE_LISTEN",
          default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Bearer token for admin endpoints; without it they refuse all.
    #[arg(long, env = "DROPGATE_ADMIN_TOKEN", value_name = "DROPGATE_ADMIN_TOKEN",
          value_parser = parse_token, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Comma-separated bearer tokens for storefront endpoints.
    #[arg(long, env = "DROPGATE_STOREFRONT_TOKENS", value_name = "DROPGATE_STOREFRONT_TOKENS",
          value_delimiter = ',', value_parser = parse_token, hide_env_values = true)]
    pub storefront_tokens: Vec<String>,

    /// Admission requests per second per customer_id (burst = same number); 0 = off.
    #[arg(
        long,
        env = "DROPGATE_CUSTOMER_RPS",
        value_name = "DROPGATE_CUSTOMER_RPS",
        default_value_t = DEFAULT_CUSTOMER_RPS
    )]
    pub customer_rps: u32,

    /// Cap on all admission requests per second (load shedding); 0 = off.
    #[arg(
        long,
        env = "DROPGATE_GLOBAL_RPS",
        value_name = "DROPGATE_GLOBAL_RPS",
        default_value_t = 0
    )]
    pub global_rps: u32,

    /// Who decides admissions: `redis` (the gate) or `postgres` (one
    /// conditional UPDATE per admission: the benchmark peer).
    #[arg(long, env = "DROPGATE_ADMISSION", value_name = "DROPGATE_ADMISSION",
          value_enum, default_value_t = crate::app::AdmissionMode::Redis)]
    pub admission: crate::app::AdmissionMode,

    /// How long a gatekeeper answers `sold_out` itself once the gate said a
    /// SKU has 0 available (ms), unless a message says units came back
    /// first; 0 turns it off (every admission runs the script).
    #[arg(long, env = "DROPGATE_SOLD_OUT_CACHE_MS", value_name = "DROPGATE_SOLD_OUT_CACHE_MS",
          default_value_t = DEFAULT_SOLD_OUT_CACHE_MS,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub sold_out_cache_ms: u64,

    /// Admissions of one SKU decided in one script call at most: while a
    /// call for the SKU is in flight, arrivals queue and go in the next
    /// call together (no timer); 1 turns batching off.
    #[arg(long, env = "DROPGATE_ADMIT_BATCH_MAX", value_name = "DROPGATE_ADMIT_BATCH_MAX",
          default_value_t = crate::gate::DEFAULT_ADMIT_BATCH_MAX,
          value_parser = parse_admit_batch_max)]
    pub admit_batch_max: usize,

    /// While Redis is unreachable: `reject` admissions (503) or `fallback`
    /// to Postgres-direct admission.
    /// Kept only to refuse `fallback` loudly (see README, "Redis
    /// unreachable"); `reject` is the one behaviour.
    #[arg(long, env = "DROPGATE_REDIS_DOWN", value_name = "DROPGATE_REDIS_DOWN",
          hide = true, value_parser = parse_redis_down)]
    pub redis_down: Option<String>,

    /// Redis replicas that must acknowledge an admission before it answers
    /// 201 (Redis WAIT); 0 = answer once the primary has it.
    #[arg(long, env = "DROPGATE_REDIS_WAIT_REPLICAS", value_name = "DROPGATE_REDIS_WAIT_REPLICAS",
          default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: u32,

    /// How long an admission waits for those replicas, in milliseconds.
    #[arg(long, env = "DROPGATE_REDIS_WAIT_TIMEOUT_MS", value_name = "DROPGATE_REDIS_WAIT_TIMEOUT_MS",
          default_value_t = DEFAULT_REDIS_WAIT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub redis_wait_timeout_ms: u64,

    /// On SIGTERM, keep serving this long with /readyz at 503 before the
    /// listener closes, so a load balancer stops sending first (ms).
    #[arg(long, env = "DROPGATE_SHUTDOWN_DELAY_MS", value_name = "DROPGATE_SHUTDOWN_DELAY_MS",
          default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_delay_ms: u64,

    /// Requests handled at once, at most; beyond them, 503 `unavailable`
    /// with Retry-After at once instead of queueing on the stores.
    #[arg(long, env = "DROPGATE_MAX_IN_FLIGHT", value_name = "DROPGATE_MAX_IN_FLIGHT",
          default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// A new connection must send its first request head within this long
    /// (ms), or it is closed (slowloris).
    #[arg(long, env = "DROPGATE_HEADER_TIMEOUT_MS", value_name = "DROPGATE_HEADER_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,

    /// After a response, the next request head must be complete within this
    /// long (ms), idle time included, or the connection is closed. Set it
    /// above the idle timeout of any load balancer in front.
    #[arg(long, env = "DROPGATE_IDLE_TIMEOUT_MS", value_name = "DROPGATE_IDLE_TIMEOUT_MS",
          default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub idle_timeout_ms: u64,

    /// Open HTTP connections at most; default and ceiling: the descriptor
    /// limit (RLIMIT_NOFILE) less 128 kept for stores and files.
    #[arg(long, env = "DROPGATE_MAX_CONNECTIONS", value_name = "DROPGATE_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_connections: Option<u32>,

    /// A second address for the operations endpoints (dashboard, /metrics,
    /// probes), so they can be private while the API is public; the public
    /// listener then keeps only the API and the probes.
    #[arg(long, env = "DROPGATE_OPS_LISTEN", value_name = "DROPGATE_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

    /// The dashboard's figures are computed at most once per this many ms
    /// and shared by every viewer; 0 computes them for each request.
    #[arg(long, env = "DROPGATE_DASHBOARD_INTERVAL_MS", value_name = "DROPGATE_DASHBOARD_INTERVAL_MS",
          default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub dashboard_interval_ms: u64,

    /// Do not run the commit worker in this process.
    #[arg(long)]
    pub no_worker: bool,

    /// Do not run the reaper in this process.
    #[arg(long)]
    pub no_reaper: bool,

    /// Do not run the reconciler (drift repair, gate rebuild) in this process.
    #[arg(long)]
    pub no_reconciler: bool,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "DROPGATE_LOG_JSON", value_name = "DROPGATE_LOG_JSON")]
    pub log_json: bool,

    /// The commit worker's batches and timing (no flags: tests tune it).
    #[arg(skip)]
    pub worker: crate::worker::Config,

    /// The reaper's interval and batches (no flags: tests tune it).
    #[arg(skip)]
    pub reaper: crate::reaper::Config,

    /// The reconciler's intervals (no flags: tests tune it).
    #[arg(skip)]
    pub reconciler: crate::reconciler::Config,
}

impl Default for ServeConfig {
    /// The flags' defaults: no tokens, so every endpoint that needs one
    /// refuses until they are set.
    fn default() -> Self {
        Self {
            stores: StoreConfig::default(),
            listen: DEFAULT_LISTEN,
            admin_token: None,
            storefront_tokens: Vec::new(),
            customer_rps: DEFAULT_CUSTOMER_RPS,
            global_rps: 0,
            admission: crate::app::AdmissionMode::Redis,
            sold_out_cache_ms: DEFAULT_SOLD_OUT_CACHE_MS,
            admit_batch_max: crate::gate::DEFAULT_ADMIT_BATCH_MAX,
            redis_down: None,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: DEFAULT_REDIS_WAIT_TIMEOUT_MS,
            shutdown_delay_ms: 0,
            max_in_flight: 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: None,
            ops_listen: None,
            dashboard_interval_ms: 1000,
            no_worker: false,
            no_reaper: false,
            no_reconciler: false,
            log_json: false,
            worker: crate::worker::Config::default(),
            reaper: crate::reaper::Config::default(),
            reconciler: crate::reconciler::Config::default(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevConfig {
    /// HTTP address.
    #[arg(long, env = "DROPGATE_LISTEN", value_name = "DROPGATE_LISTEN",
          default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Stock of the demo SKU `demo-drop`.
    #[arg(long, default_value_t = 100)]
    pub demo_stock: i64,
}

/// Exits with one line naming the variable when a value is bad.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            if matches!(
                error.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) {
                let arg = match error.get(ContextKind::InvalidArg) {
                    Some(ContextValue::String(arg)) => arg.clone(),
                    _ => String::new(),
                };
                // Value names are the variable names: "--listen <DROPGATE_LISTEN>".
                let name = arg
                    .split_once('<')
                    .and_then(|(_, rest)| rest.strip_suffix('>'))
                    .unwrap_or(&arg);
                let reason = std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "invalid value".to_owned());
                eprintln!("{name}: {reason}");
                std::process::exit(2);
            }
            error.exit()
        }
    }
}

/// 1..=1024: a batch's keys and arguments stay well inside what one script
/// call can take.
fn parse_admit_batch_max(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(format!("{value:?} is not a number from 1 to 1024")),
    }
}

fn parse_redis_down(value: &str) -> Result<String, String> {
    match value {
        "reject" => Ok(value.to_owned()),
        "fallback" => Err(
            "fallback was removed: Postgres cannot admit while the gate holds \
                           admissions it has not committed without overselling or losing them; \
                           Redis down means 503 (see README)"
                .into(),
        ),
        _ => Err("must be reject".into()),
    }
}

fn parse_database_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(url_error)?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("scheme must be postgres://".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err("missing database name".into());
    }
    Ok(value.to_owned())
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(url_error)?;
    if !matches!(url.scheme(), "redis" | "rediss" | "unix" | "redis+unix") {
        return Err("scheme must be redis://".into());
    }
    redis::Client::open(value).map_err(|_| "not a Redis URL".to_owned())?;
    Ok(value.to_owned())
}

fn url_error(error: url::ParseError) -> String {
    match error {
        url::ParseError::InvalidPort => "invalid port".into(),
        url::ParseError::RelativeUrlWithoutBase => "not a URL".into(),
        other => other.to_string(),
    }
}

fn parse_key_prefix(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err("must be 1..64 characters of [A-Za-z0-9._-]".into())
    }
}

fn parse_token(value: &str) -> Result<String, String> {
    if value.len() < 8 || value.len() > 256 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("tokens must be 8..256 visible ASCII characters".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_checked() {
        assert_eq!(
            parse_database_url("postgres://postgres@127.0.0.1:99999/x").unwrap_err(),
            "invalid port"
        );
        assert!(parse_database_url("mysql://h/x").is_err());
        assert!(parse_database_url("postgres://h/").is_err());
        assert!(parse_database_url(DEFAULT_DATABASE_URL).is_ok());
    }

    #[test]
    fn redis_urls_and_prefixes_are_checked() {
        assert!(parse_redis_url(DEFAULT_REDIS_URL).is_ok());
        assert!(parse_redis_url("http://h").is_err());
        assert!(parse_key_prefix("dg").is_ok());
        assert!(parse_key_prefix("a:b").is_err());
        assert!(parse_token("short").is_err());
    }

    #[test]
    fn the_default_serve_config_is_the_flags_defaults() {
        // The flags also read the environment; a set variable would differ.
        let from_env = std::env::vars().any(|(name, _)| {
            name.starts_with("DROPGATE_") || name == "DATABASE_URL" || name == "REDIS_URL"
        });
        if from_env {
            eprintln!("skipped: a DROPGATE_*, DATABASE_URL or REDIS_URL variable is set");
            return;
        }
        let Command::Serve(parsed) = Cli::try_parse_from(["dropgate", "serve"]).unwrap().command
        else {
            panic!("not serve");
        };
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", ServeConfig::default())
        );
    }
}
