//! The commit worker: reads every SKU's event stream through one consumer
//! group in bounded batches, applies each batch to the ledger in one
//! transaction, and acknowledges only after the commit. Delivering an event
//! twice is harmless (the ledger skips what it has), so several workers may
//! run at once and a crashed worker's pending events are simply claimed and
//! applied again by another.

use crate::app::Dropgate;
use crate::domain::{Event, Position, SkuId};
use crate::gate::{Consumer, Delivery};
use crate::ledger::ApplyReport;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Our member of the group, reading on a connection of its own, off the
    /// hot path's multiplexed one (a blocked read would stall the pipeline
    /// behind it).
    consumer: Consumer,
    limits: WorkerLimits,
    skus: Vec<SkuId>,
    skus_read_at: Option<Instant>,
    claimed_at: Option<Instant>,
}

impl Worker {
    pub fn new(app: Dropgate, limits: WorkerLimits) -> Result<Self, WorkerError> {
        let consumer = app
            .gate
            .consumer(&format!("worker-{}", uuid::Uuid::new_v4().simple()))?;
        Ok(Self {
            app,
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
        tracing::info!(consumer = self.consumer.name(), "commit worker started");
        while !*stop.borrow() {
            match self.run_once().await {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(error) => {
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
        tracing::info!(consumer = self.consumer.name(), "commit worker stopped");
    }

    /// One batch: claim what dead consumers left (now and then), else read
    /// new events (waiting at most `read_block_ms`), apply, acknowledge.
    pub async fn run_once(&mut self) -> Result<ApplyReport, WorkerError> {
        self.refresh_skus().await?;
        if self.skus.is_empty() {
            tokio::time::sleep(Duration::from_millis(self.limits.read_block_ms as u64)).await;
            return Ok(ApplyReport::default());
        }

        let mut entries: Vec<Delivery> = Vec::new();
        let claim_due = self.claimed_at.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(self.limits.claim_idle_ms as u64 / 2)
        });
        if claim_due {
            // Our own pending entries count too: a batch that failed to
            // commit is retried from here after the idle time.
            entries = self
                .consumer
                .claim_idle(
                    &self.skus,
                    self.limits.claim_idle_ms,
                    self.limits.batch_max_events,
                )
                .await?;
            self.claimed_at = Some(Instant::now());
        }
        if entries.is_empty() {
            let per_stream = (self.limits.batch_max_events / self.skus.len()).max(1);
            entries = self
                .consumer
                .read_new(&self.skus, per_stream, self.limits.read_block_ms)
                .await?;
        }
        if entries.is_empty() {
            return Ok(ApplyReport::default());
        }

        // Deliveries say which SKUs moved and how far; what is applied is
        // read back from each stream in order from the ledger's position.
        // A dead consumer's claimed entries can arrive after newer ones were
        // applied, so applying deliveries as they come could leave a gap.
        let mut delivered: BTreeMap<SkuId, Vec<Event>> = BTreeMap::new();
        let mut acks: BTreeMap<SkuId, Vec<Position>> = BTreeMap::new();
        for entry in entries {
            let (sku, id) = (entry.sku, entry.position.stream_id());
            match entry.event {
                Ok(event) => delivered.entry(sku.clone()).or_default().push(event),
                Err(error) => tracing::error!(%sku, %id, %error, "unreadable event"),
            }
            acks.entry(sku).or_default().push(entry.position);
        }
        for events in delivered.values_mut() {
            events.sort_by_key(|e| e.position);
        }
        let (report, unknown) = self.apply_up_to(delivered).await?;
        // An event leaves the stream only once the ledger has it: events of
        // a SKU the ledger does not know stay pending.
        self.app.set_unknown_skus(unknown.clone());
        acks.retain(|sku, _| !unknown.contains(sku));

        for (sku, positions) in &acks {
            self.consumer.ack(sku, positions).await?;
        }
        for sku in acks.keys() {
            self.app.gate.trim_events(sku).await?;
        }
        Ok(report)
    }

    /// Applies every SKU's events from the ledger's position up to its
    /// target, in bounded batches, one transaction per batch.
    ///
    /// The delivered events themselves are applied when they follow the
    /// ledger's position without a gap (positions within an epoch count up
    /// by one), which is the common case; otherwise the stream is read again.
    /// Returns what was applied and the SKUs the ledger does not know.
    async fn apply_up_to(
        &self,
        mut delivered: BTreeMap<SkuId, Vec<Event>>,
    ) -> Result<(ApplyReport, BTreeSet<SkuId>), WorkerError> {
        let targets: BTreeMap<SkuId, Position> = delivered
            .iter()
            .filter_map(|(sku, events)| Some((sku.clone(), events.last()?.position)))
            .collect();
        let mut total = ApplyReport::default();
        let mut unknown = BTreeSet::new();
        let per_sku = (self.limits.batch_max_events / targets.len().max(1)).max(100);
        loop {
            let skus: Vec<SkuId> = targets.keys().cloned().collect();
            let applied = self.app.ledger.applied_positions(&skus).await?;
            let mut batch: BTreeMap<SkuId, Vec<Event>> = BTreeMap::new();
            for (sku, target) in &targets {
                let Some(from) = applied.get(sku).copied() else {
                    if unknown.insert(sku.clone()) {
                        tracing::error!(%sku, "events of a SKU the ledger does not know: not acknowledged");
                    }
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
                return Ok((total, unknown));
            }
            let started = Instant::now();
            let report = match self.app.ledger.apply(&batch).await {
                Ok(report) => report,
                Err(error) if error.is_unavailable() => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, "batch refused; applying SKU by SKU");
                    self.apply_isolated(batch.clone()).await?
                }
            };
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
                let lag_ms = (self.app.now_ms() - oldest).max(0);
                metrics::gauge!("dropgate_commit_lag_seconds").set(lag_ms as f64 / 1000.0);
            }
            self.app.applied(&report).await?;
            total.merge(report);
        }
    }

    /// Applies a refused batch SKU by SKU, and a refused SKU event by event,
    /// so one bad event stops neither its SKU nor the others: an event the
    /// ledger refuses on its own is set aside as a dead letter.
    async fn apply_isolated(
        &self,
        batch: BTreeMap<SkuId, Vec<Event>>,
    ) -> Result<ApplyReport, WorkerError> {
        let mut total = ApplyReport::default();
        for (sku, events) in batch {
            let whole = BTreeMap::from([(sku.clone(), events.clone())]);
            match self.app.ledger.apply(&whole).await {
                Ok(report) => total.merge(report),
                Err(error) if error.is_unavailable() => return Err(error.into()),
                Err(_) => {
                    for event in events {
                        let one = BTreeMap::from([(sku.clone(), vec![event.clone()])]);
                        match self.app.ledger.apply(&one).await {
                            Ok(report) => total.merge(report),
                            Err(error) if error.is_unavailable() => return Err(error.into()),
                            Err(error) => {
                                let reason = error.to_string();
                                if self.app.ledger.dead_letter(&sku, &event, &reason).await? {
                                    metrics::counter!("dropgate_ledger_dead_letters_total")
                                        .increment(1);
                                    tracing::error!(%sku, event_id = %event.event_id, %reason,
                                        "event set aside as a dead letter");
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(total)
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
    events.first().is_some_and(|e| e.position == from.next())
        && events
            .windows(2)
            .all(|w| w[1].position == w[0].position.next())
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
                hold_id: HoldId::new(1, 0, [0; 16]),
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
