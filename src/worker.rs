//! The commit worker: reads every SKU's event stream through one consumer
//! group in bounded batches, applies each batch to the ledger in one
//! transaction, and acknowledges only after the commit. Delivering an event
//! twice is harmless (the ledger skips what it has), so several workers may
//! run at once and a crashed worker's pending events are simply claimed and
//! applied again by another.

use crate::app::Dropgate;
use crate::domain::{now_ms, Event, Position, SkuId};
use crate::gate::{parse_event, CONSUMER_GROUP};
use crate::ledger::ApplyReport;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bounds of one batch: events read, and how long a read may wait for them.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    pub batch_max_events: usize,
    pub read_block_ms: usize,
    /// A pending event idle this long belongs to a dead consumer: claim it.
    pub claim_idle_ms: usize,
    /// How often the SKU list (the registry hash, not a keyspace scan) is
    /// re-read.
    pub sku_refresh: Duration,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            batch_max_events: 5000,
            read_block_ms: 20,
            claim_idle_ms: 5_000,
            sku_refresh: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl WorkerError {
    /// The reply with which a reachable Redis refused, if that is the cause.
    fn trouble(&self) -> Option<crate::gate::Trouble> {
        match self {
            Self::Redis(error) => crate::gate::Trouble::of(error),
            Self::App(crate::app::AppError::Gate(error)) => error.trouble(),
            Self::App(_) | Self::Pool(_) => None,
        }
    }
}

impl From<crate::gate::GateError> for WorkerError {
    fn from(error: crate::gate::GateError) -> Self {
        Self::App(error.into())
    }
}

impl From<crate::ledger::LedgerError> for WorkerError {
    fn from(error: crate::ledger::LedgerError) -> Self {
        Self::App(error.into())
    }
}

pub struct Worker {
    app: Dropgate,
    /// Blocking stream reads get their own connections, off the hot path's
    /// multiplexed one (a blocked read would stall the pipeline behind it).
    pool: deadpool_redis::Pool,
    consumer: String,
    limits: WorkerLimits,
    skus: Vec<SkuId>,
    skus_read_at: Option<Instant>,
    claimed_at: Option<Instant>,
}

impl Worker {
    pub fn new(app: Dropgate, redis_url: &str, limits: WorkerLimits) -> Result<Self, WorkerError> {
        let pool = deadpool_redis::Config::from_url(redis_url)
            .builder()
            .map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "pool config", e.to_string()))
            })?
            .max_size(2)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "pool build", e.to_string()))
            })?;
        let consumer = format!("worker-{}", uuid::Uuid::new_v4().simple());
        Ok(Self {
            app,
            pool,
            consumer,
            limits,
            skus: Vec::new(),
            skus_read_at: None,
            claimed_at: None,
        })
    }

    /// Runs until `stop` turns true, backing off (capped) while a store is away.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        tracing::info!(consumer = %self.consumer, "commit worker started");
        while !*stop.borrow() {
            match self.run_once().await {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(error) => {
                    if error.trouble() == Some(crate::gate::Trouble::ReadOnly) {
                        // A failover demoted our Redis: drop the pooled
                        // connections so the next ones reach the new primary.
                        self.pool.retain(|_, _| false);
                    }
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "commit worker batch failed");
                    metrics::counter!("dropgate_worker_errors_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "commit worker stopped");
    }

    /// One batch: claim what dead consumers left (now and then), else read
    /// new events (waiting at most `read_block_ms`), apply, acknowledge.
    pub async fn run_once(&mut self) -> Result<ApplyReport, WorkerError> {
        self.refresh_skus().await?;
        if self.skus.is_empty() {
            tokio::time::sleep(Duration::from_millis(self.limits.read_block_ms as u64)).await;
            return Ok(ApplyReport::default());
        }
        let mut conn = self.pool.get().await?;
        let keys: HashMap<String, SkuId> = self
            .skus
            .iter()
            .map(|sku| (self.app.gate.keys().events(sku), sku.clone()))
            .collect();

        let mut entries: Vec<(String, StreamId)> = Vec::new();
        let claim_due = self.claimed_at.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(self.limits.claim_idle_ms as u64 / 2)
        });
        if claim_due {
            // Our own pending entries count too: a batch that failed to
            // commit is retried from here after the idle time.
            for key in keys.keys() {
                let reply: StreamAutoClaimReply = conn
                    .xautoclaim_options(
                        key,
                        CONSUMER_GROUP,
                        &self.consumer,
                        self.limits.claim_idle_ms,
                        "0-0",
                        StreamAutoClaimOptions::default().count(self.limits.batch_max_events),
                    )
                    .await?;
                entries.extend(reply.claimed.into_iter().map(|e| (key.clone(), e)));
            }
            self.claimed_at = Some(Instant::now());
        }
        if entries.is_empty() {
            let stream_keys: Vec<&String> = keys.keys().collect();
            let ids: Vec<&str> = vec![">"; stream_keys.len()];
            let per_stream = (self.limits.batch_max_events / stream_keys.len()).max(1);
            let options = StreamReadOptions::default()
                .group(CONSUMER_GROUP, &self.consumer)
                .count(per_stream)
                .block(self.limits.read_block_ms);
            let reply: Option<StreamReadReply> =
                conn.xread_options(&stream_keys, &ids, &options).await?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let key = stream.key;
                entries.extend(stream.ids.into_iter().map(|e| (key.clone(), e)));
            }
        }
        drop(conn);
        if entries.is_empty() {
            return Ok(ApplyReport::default());
        }

        // Deliveries say which SKUs moved and how far; what is applied is
        // read back from each stream in order from the ledger's position.
        // A dead consumer's claimed entries can arrive after newer ones were
        // applied, so applying deliveries as they come could leave a gap.
        let mut delivered: BTreeMap<SkuId, Vec<Event>> = BTreeMap::new();
        let mut acks: HashMap<String, Vec<String>> = HashMap::new();
        for (key, entry) in &entries {
            let Some(sku) = keys.get(key) else { continue };
            match parse_event(&entry.id, &entry.map) {
                Ok(event) => delivered.entry(sku.clone()).or_default().push(event),
                Err(error) => tracing::error!(%sku, id = %entry.id, %error, "unreadable event"),
            }
            acks.entry(key.clone()).or_default().push(entry.id.clone());
        }
        for events in delivered.values_mut() {
            events.sort_by_key(|e| e.position);
        }
        let report = self.apply_up_to(delivered).await?;

        let mut conn = self.pool.get().await?;
        for (key, ids) in &acks {
            let _: u64 = conn.xack(key, CONSUMER_GROUP, ids).await?;
        }
        drop(conn);
        for (key, sku) in &keys {
            if acks.contains_key(key) {
                self.app.gate.trim_events(sku).await?;
            }
        }
        Ok(report)
    }

    /// Applies every SKU's events from the ledger's position up to its
    /// target, in bounded batches, one transaction per batch.
    ///
    /// The delivered events themselves are applied when they follow the
    /// ledger's position without a gap (positions within an epoch count up
    /// by one), which is the common case; otherwise the stream is read again.
    async fn apply_up_to(
        &self,
        mut delivered: BTreeMap<SkuId, Vec<Event>>,
    ) -> Result<ApplyReport, WorkerError> {
        let targets: BTreeMap<SkuId, Position> = delivered
            .iter()
            .filter_map(|(sku, events)| Some((sku.clone(), events.last()?.position)))
            .collect();
        let mut total = ApplyReport::default();
        let per_sku = (self.limits.batch_max_events / targets.len().max(1)).max(100);
        loop {
            let skus: Vec<SkuId> = targets.keys().cloned().collect();
            let applied = self.app.ledger.applied_positions(&skus).await?;
            let mut batch: BTreeMap<SkuId, Vec<Event>> = BTreeMap::new();
            for (sku, target) in &targets {
                let Some(from) = applied.get(sku).copied() else {
                    continue;
                };
                if from >= *target {
                    continue;
                }
                let events = match delivered.remove(sku) {
                    Some(events) if follows(from, &events) => events,
                    _ => {
                        self.app
                            .gate
                            .events(sku, from, Some(*target), per_sku)
                            .await?
                    }
                };
                if !events.is_empty() {
                    batch.insert(sku.clone(), events);
                }
            }
            if batch.is_empty() {
                return Ok(total);
            }
            let started = Instant::now();
            let report = self.app.ledger.apply(&batch).await?;
            metrics::histogram!("dropgate_worker_commit_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(
                events = report.applied,
                commit_ms = started.elapsed().as_millis() as u64,
                "batch committed"
            );
            metrics::histogram!("dropgate_worker_batch_events")
                .record(batch.values().map(Vec::len).sum::<usize>() as f64);
            if let Some(oldest) = batch.values().flatten().map(|e| e.occurred_at_ms).min() {
                let lag_ms = (now_ms() - oldest).max(0);
                metrics::gauge!("dropgate_commit_lag_seconds").set(lag_ms as f64 / 1000.0);
            }
            self.app.applied(&report).await?;
            total.applied += report.applied;
            total.skipped += report.skipped;
            total.lost.extend(report.lost);
        }
    }

    async fn refresh_skus(&mut self) -> Result<(), WorkerError> {
        if self
            .skus_read_at
            .is_none_or(|at| at.elapsed() >= self.limits.sku_refresh)
        {
            self.skus = self.app.gate.skus().await?;
            self.skus_read_at = Some(Instant::now());
        }
        Ok(())
    }
}

/// True when `events` start right after `from` and leave no gap.
fn follows(from: Position, events: &[Event]) -> bool {
    let next = |p: Position| Position {
        epoch: p.epoch,
        seq: p.seq + 1,
    };
    events.first().is_some_and(|e| e.position == next(from))
        && events
            .windows(2)
            .all(|w| w[1].position == next(w[0].position))
}

/// Counts what an apply did, whoever applied (worker or inline confirm).
pub fn record_apply(report: &ApplyReport) {
    metrics::counter!("dropgate_ledger_events_applied_total").increment(report.applied);
    metrics::counter!("dropgate_ledger_events_skipped_total").increment(report.skipped);
    metrics::counter!("dropgate_ledger_holds_lost_total").increment(report.lost.len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Change, HoldId, HoldState};

    fn at(epoch: i64, seq: i64) -> Event {
        Event {
            position: Position { epoch, seq },
            event_id: uuid::Uuid::new_v4(),
            occurred_at_ms: 0,
            change: Change::Settle {
                hold_id: HoldId::generate(1, 0),
                to: HoldState::Released,
                quantity: 1,
            },
        }
    }

    #[test]
    fn delivered_events_are_used_only_without_a_gap() {
        let from = Position { epoch: 3, seq: 9 };
        assert!(follows(from, &[at(3, 10), at(3, 11)]));
        assert!(
            !follows(from, &[at(3, 11), at(3, 12)]),
            "gap after the ledger's position"
        );
        assert!(!follows(from, &[at(3, 10), at(3, 12)]), "gap inside");
        assert!(
            !follows(from, &[at(4, 0)]),
            "a new epoch is read from the stream"
        );
        assert!(follows(Position { epoch: 4, seq: -1 }, &[at(4, 0)]));
        assert!(!follows(from, &[]));
    }
}
