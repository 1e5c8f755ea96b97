//! The nemesis: a schedule of faults drawn from the run's seed, injected one
//! after another with quiet gaps between them, each printed and recorded
//! with its start and end. A supervisor meanwhile starts again any process
//! that exited on its own, as a service manager would (and records that too:
//! a process that dies without being killed is a finding).

use crate::history::{Fault as Record, Recorder};
use crate::proxy::Mode;
use crate::topology::{Topology, signal};
use rand::Rng;
use rand::rngs::StdRng;
use redis::AsyncCommands;
use redis::streams::{StreamInfoGroupsReply, StreamPendingCountReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// kill -9, down for a while, started again.
    Kill { target: &'static str, down_ms: u64 },
    /// SIGSTOP, then SIGCONT.
    Pause { target: &'static str, ms: u64 },
    /// Redis killed and started again empty.
    RedisRestart { down_ms: u64 },
    /// Postgres cut (connections reset, or a blackhole), then slow.
    Postgres {
        blackhole: bool,
        cut_ms: u64,
        delay_ms: u64,
        slow_ms: u64,
    },
    /// gk2's clock off by `offset_s` (libfaketime).
    Skew { offset_s: i64, ms: u64 },
    /// A second commit worker runs beside the first, then is killed.
    SecondWorker { ms: u64 },
    /// Every stream's consumer group rewound to 0: everything still in the
    /// streams is delivered again.
    Rewind,
    /// Every pending entry claimed by a consumer that never acknowledges:
    /// the live worker claims them back once idle.
    Steal,
}

const PROCESSES: [&str; 4] = ["gk1", "gk2", "worker", "reconciler"];
const PAUSABLE: [&str; 5] = ["gk1", "gk2", "worker", "reconciler", "redis"];

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Self::Kill { .. } => "kill",
            Self::Pause { .. } => "pause",
            Self::RedisRestart { .. } => "redis-restart-empty",
            Self::Postgres { .. } => "postgres-cut-slow",
            Self::Skew { .. } => "clock-skew",
            Self::SecondWorker { .. } => "second-worker",
            Self::Rewind => "rewind-group",
            Self::Steal => "steal-pending",
        }
    }

    fn target(&self) -> &'static str {
        match self {
            Self::Kill { target, .. } | Self::Pause { target, .. } => target,
            Self::RedisRestart { .. } | Self::Rewind | Self::Steal => "redis",
            Self::Postgres { .. } => "postgres",
            Self::Skew { .. } => "gk2",
            Self::SecondWorker { .. } => "worker2",
        }
    }
}

/// Draws one fault. Weights favour the faults that leave the system in an
/// interesting state without erasing it: a Redis restart empty is rarer, as
/// it excuses lost holds for everything admitted before it.
pub fn draw(rng: &mut StdRng, skew: bool) -> Fault {
    loop {
        let fault = match rng.random_range(0..100) {
            0..20 => Fault::Kill {
                target: PROCESSES[rng.random_range(0..PROCESSES.len())],
                down_ms: rng.random_range(0..1500),
            },
            20..45 => Fault::Pause {
                target: PAUSABLE[rng.random_range(0..PAUSABLE.len())],
                ms: rng.random_range(100..=5000),
            },
            45..53 => Fault::RedisRestart {
                down_ms: rng.random_range(0..1000),
            },
            53..68 => Fault::Postgres {
                blackhole: rng.random_bool(0.5),
                cut_ms: rng.random_range(500..=4000),
                delay_ms: rng.random_range(20..=400),
                slow_ms: rng.random_range(1000..=4000),
            },
            68..80 => Fault::Skew {
                offset_s: if rng.random_bool(0.5) { 5 } else { -5 },
                ms: rng.random_range(2000..=6000),
            },
            80..90 => Fault::SecondWorker {
                ms: rng.random_range(2000..=6000),
            },
            90..95 => Fault::Rewind,
            _ => Fault::Steal,
        };
        if skew || !matches!(fault, Fault::Skew { .. }) {
            return fault;
        }
    }
}

/// Runs faults until `until_ns` (monotonic, the recorder's clock), each
/// shortened to end by then. Returns what it injected.
pub async fn run(
    topology: Arc<Mutex<Topology>>,
    recorder: Arc<Recorder>,
    mut rng: StdRng,
    until_ns: u64,
    skew: bool,
) -> Vec<Record> {
    let mut injected = Vec::new();
    // A quiet start, so the workload is under way first.
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    loop {
        let fault = draw(&mut rng, skew);
        let gap_ms = rng.random_range(200..2500);
        let left_ms = until_ns.saturating_sub(recorder.now_ns()) / 1_000_000;
        if left_ms < 1000 {
            break;
        }
        let fault = shorten(fault, left_ms.saturating_sub(500));
        let start_ns = recorder.now_ns();
        let detail = inject(&topology, &fault).await;
        let record = Record {
            name: fault.name().to_owned(),
            target: fault.target().to_owned(),
            start_ns,
            end_ns: recorder.now_ns(),
            data_loss: matches!(fault, Fault::RedisRestart { .. }),
            detail: format!("{fault:?}{detail}"),
        };
        println!(
            "  fault {:>6.2}s..{:>6.2}s {:<20} {:<10} {}",
            record.start_ns as f64 / 1e9,
            record.end_ns as f64 / 1e9,
            record.name,
            record.target,
            record.detail
        );
        recorder.fault(record.clone());
        injected.push(record);
        let left_ms = until_ns.saturating_sub(recorder.now_ns()) / 1_000_000;
        tokio::time::sleep(Duration::from_millis(gap_ms.min(left_ms))).await;
    }
    injected
}

fn shorten(fault: Fault, max_ms: u64) -> Fault {
    let cap = |ms: u64| ms.min(max_ms);
    match fault {
        Fault::Kill { target, down_ms } => Fault::Kill {
            target,
            down_ms: cap(down_ms),
        },
        Fault::Pause { target, ms } => Fault::Pause {
            target,
            ms: cap(ms),
        },
        Fault::RedisRestart { down_ms } => Fault::RedisRestart {
            down_ms: cap(down_ms),
        },
        Fault::Postgres {
            blackhole,
            cut_ms,
            delay_ms,
            slow_ms,
        } => Fault::Postgres {
            blackhole,
            cut_ms: cap(cut_ms),
            delay_ms,
            slow_ms: cap(slow_ms).min(max_ms.saturating_sub(cap(cut_ms))),
        },
        Fault::Skew { offset_s, ms } => Fault::Skew {
            offset_s,
            ms: cap(ms),
        },
        Fault::SecondWorker { ms } => Fault::SecondWorker { ms: cap(ms) },
        instant @ (Fault::Rewind | Fault::Steal) => instant,
    }
}

/// Injects one fault and heals it; returns a note on what happened.
async fn inject(topology: &Mutex<Topology>, fault: &Fault) -> String {
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    match fault {
        Fault::Kill { target, down_ms } => {
            if let Some(service) = topology.lock().await.service(target) {
                service.kill();
            }
            sleep(*down_ms).await;
            restart(topology, target).await
        }
        Fault::Pause { target, ms } => {
            let pid = topology.lock().await.pid(target);
            let Some(pid) = pid else {
                return " (not running)".to_owned();
            };
            signal(pid, "STOP");
            sleep(*ms).await;
            signal(pid, "CONT");
            String::new()
        }
        Fault::RedisRestart { down_ms } => {
            topology.lock().await.redis.kill();
            sleep(*down_ms).await;
            match topology.lock().await.restart_redis().await {
                Ok(()) => String::new(),
                Err(error) => format!(" (restart failed: {error})"),
            }
        }
        Fault::Postgres {
            blackhole,
            cut_ms,
            delay_ms,
            slow_ms,
        } => {
            let cut = if *blackhole {
                Mode::Blackhole
            } else {
                Mode::Reset
            };
            topology.lock().await.proxy.set(cut);
            sleep(*cut_ms).await;
            topology
                .lock()
                .await
                .proxy
                .set(Mode::Delay(Duration::from_millis(*delay_ms)));
            sleep(*slow_ms).await;
            topology.lock().await.proxy.set(Mode::Pass);
            String::new()
        }
        Fault::Skew { offset_s, ms } => {
            topology.lock().await.set_clock(&format!("{offset_s:+}s"));
            sleep(*ms).await;
            topology.lock().await.set_clock("+0");
            String::new()
        }
        Fault::SecondWorker { ms } => {
            if let Err(error) = topology.lock().await.start_extra_worker() {
                return format!(" (could not start: {error})");
            }
            sleep(*ms).await;
            if let Some(mut extra) = topology.lock().await.extra_worker.take() {
                extra.kill();
            }
            String::new()
        }
        Fault::Rewind | Fault::Steal => {
            let url = topology.lock().await.redis_url();
            match redeliver(&url, *fault == Fault::Rewind).await {
                Ok(entries) => format!(" ({entries} entries)"),
                Err(error) => format!(" (failed: {error})"),
            }
        }
    }
}

async fn restart(topology: &Mutex<Topology>, target: &str) -> String {
    let mut topology = topology.lock().await;
    if target == "redis" {
        return match topology.restart_redis().await {
            Ok(()) => String::new(),
            Err(error) => format!(" (restart failed: {error})"),
        };
    }
    match topology.service(target).map(|s| s.spawn()) {
        Some(Ok(())) => String::new(),
        Some(Err(error)) => format!(" (restart failed: {error})"),
        None => " (no such process)".to_owned(),
    }
}

/// Rewinds every consumer group of every stream to 0, or claims every
/// pending entry for a consumer that never acknowledges. Streams and groups
/// are found, not assumed, so the key layout may change. Returns the number
/// of entries affected (pending entries, for a rewind: stream lengths).
async fn redeliver(url: &str, rewind: bool) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timeout")))??;
    let streams: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100_000)
        .arg("TYPE")
        .arg("stream")
        .query_async::<(u64, Vec<String>)>(&mut conn)
        .await?
        .1;
    let mut affected = 0;
    for stream in streams {
        let groups: StreamInfoGroupsReply = conn.xinfo_groups(&stream).await?;
        for group in groups.groups {
            if rewind {
                affected += conn.xlen::<_, usize>(&stream).await?;
                redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(&stream)
                    .arg(&group.name)
                    .arg("0")
                    .query_async::<()>(&mut conn)
                    .await?;
                continue;
            }
            let pending: StreamPendingCountReply = conn
                .xpending_count(&stream, &group.name, "-", "+", 10_000)
                .await?;
            if pending.ids.is_empty() {
                continue;
            }
            affected += pending.ids.len();
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(&stream)
                .arg(&group.name)
                .arg("nemesis-thief")
                .arg(0);
            for entry in &pending.ids {
                claim.arg(&entry.id);
            }
            claim
                .arg("JUSTID")
                .query_async::<redis::Value>(&mut conn)
                .await?;
        }
    }
    Ok(affected)
}

/// Starts again every service that exited on its own, until `stop`.
pub async fn supervise(
    topology: Arc<Mutex<Topology>>,
    recorder: Arc<Recorder>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut topology = topology.lock().await;
        for service in &mut topology.services {
            // A process the nemesis killed is restarted by the nemesis; the
            // service table only holds live children or exited ones.
            let Some(status) = service.exited() else {
                continue;
            };
            if status == "not running" {
                continue;
            }
            let now = recorder.now_ns();
            let restarted = service.spawn().is_ok();
            println!(
                "  exit  {:>6.2}s {} exited on its own ({status}); restarted: {restarted}",
                now as f64 / 1e9,
                service.name
            );
            recorder.fault(Record {
                name: "exited".to_owned(),
                target: service.name.clone(),
                start_ns: now,
                end_ns: now,
                data_loss: false,
                detail: status,
            });
        }
    }
}
