//! The commit worker: applies every SKU's events to the ledger in bounded
//! batches, one transaction per batch, through one consumer group, and
//! acknowledges only after the commit. Delivering an event twice is
//! harmless (the ledger skips what it has), so several workers may run at
//! once and a crashed worker's pending events are simply claimed and
//! applied again by another.
//!
//! Work follows activity: the worker reads only the streams that activity
//! hints name (see `gate::activity`) and blocks on the hints while there
//! are none, so a catalogue of idle SKUs costs one blocked read per
//! `read_block_ms` and a small sweep. What a hint cannot say is covered
//! thus: a stream left holding entries that are not ours to acknowledge
//! (another consumer's, which may have died) stays watched long enough for
//! a claim round to take them once they are idle; SKUs the ledger does not
//! know stay watched while they are unknown (their events wait in the
//! stream); and a sweep looks at the stream length of a few SKUs per
//! interval, round the whole catalogue, and reads and watches every stream
//! that still holds entries, which makes good a lost hint, or a dead
//! consumer nobody saw, within one round.

use crate::app::Dropgate;
use crate::domain::{Event, Position, SkuId};
use crate::gate::{ActivityCursor, Consumer, Deliveries};
use crate::ledger::ApplyReport;
use crate::sweep::Sweep;
use crate::telemetry::metric;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Activity entries read per call (each names up to a few hundred SKUs).
const HINT_ENTRIES_PER_READ: usize = 100;

/// Streams named in one group read: bounds the command, and the batch.
const MAX_STREAMS_PER_READ: usize = 500;

/// How the worker runs, and the bounds of one batch. Tests tune it.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub batch_max_events: usize,
    /// How long a pass with nothing to do waits for an activity hint (a
    /// blocking read of the activity stream, capped at half the store
    /// timeout). A hint ends the wait at once, so this bounds only the
    /// pace of an idle worker, not the commit lag.
    pub read_block_ms: usize,
    /// A pending event idle this long belongs to a dead consumer: claim it.
    pub claim_idle_ms: usize,
    /// How often the sweep looks at its next slice of the catalogue.
    pub sweep_interval: Duration,
    /// SKUs per slice of the sweep: one `XLEN` each. A lost hint is made
    /// good within `catalogue / sweep_skus` intervals.
    pub sweep_skus: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_max_events: 5000,
            read_block_ms: 1000,
            claim_idle_ms: 5_000,
            sweep_interval: Duration::from_secs(1),
            sweep_skus: 32,
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
    limits: Config,
    /// Where we are in the activity stream. Starts at its oldest entry, so
    /// a worker that starts late reads the recent past.
    hints: ActivityCursor,
    /// Streams to read next: hinted, found non-empty by the sweep, or
    /// filled their share of the last read (there may be more).
    to_read: BTreeSet<SkuId>,
    /// SKUs whose streams held entries lately that we have not acknowledged
    /// (ours in flight, another consumer's, undelivered ones), and when we
    /// last saw them so: claims look at these. An empty stream has nothing
    /// to claim.
    watched: HashMap<SkuId, Instant>,
    /// SKUs whose events the ledger does not know: left pending, claimed
    /// again every claim round until the ledger knows them.
    unknown: BTreeSet<SkuId>,
    sweep: Sweep,
    swept_at: Option<Instant>,
    claimed_at: Option<Instant>,
}

impl Worker {
    pub fn new(app: Dropgate, limits: Config) -> Result<Self, WorkerError> {
        let consumer = app
            .gate
            .consumer(&format!("worker-{}", uuid::Uuid::new_v4().simple()))?;
        Ok(Self {
            app,
            consumer,
            limits,
            hints: ActivityCursor::start(),
            to_read: BTreeSet::new(),
            watched: HashMap::new(),
            unknown: BTreeSet::new(),
            sweep: Sweep::new(),
            swept_at: None,
            claimed_at: None,
        })
    }

    /// Runs until `stop` turns true, backing off (capped) while a store is
    /// away. A stop ends the wait for hints at once; a batch is finished.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        tracing::info!(consumer = self.consumer.name(), "commit worker started");
        while !*stop.borrow() {
            let learned = tokio::select! {
                learned = self.learn(self.limits.read_block_ms) => learned,
                _ = stop.changed() => break,
            };
            let done = match learned {
                Ok(()) => self.work().await,
                Err(error) => Err(error),
            };
            match done {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "commit worker batch failed");
                    metrics::counter!(metric::WORKER_ERRORS_TOTAL).increment(1);
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

    /// One batch: learn which streams moved (waiting up to `read_block_ms`
    /// for a hint when nothing is known to wait), then claim what dead
    /// consumers left (now and then), else read the streams that moved;
    /// apply, acknowledge.
    pub async fn run_once(&mut self) -> Result<ApplyReport, WorkerError> {
        self.learn(self.limits.read_block_ms).await?;
        self.work().await
    }

    /// Takes the sweep's next slice when due, then the activity hints,
    /// waiting up to `block_ms` for one when there is nothing else to do.
    async fn learn(&mut self, block_ms: usize) -> Result<(), WorkerError> {
        let now = Instant::now();
        if self
            .swept_at
            .is_none_or(|at| now.duration_since(at) >= self.limits.sweep_interval)
        {
            self.swept_at = Some(now);
            let slice = self
                .sweep
                .next(&self.app.gate, self.limits.sweep_skus)
                .await?;
            let lengths = self.app.gate.backlogs(&slice).await?;
            for (sku, length) in slice.into_iter().zip(lengths) {
                if length > 0 {
                    self.to_read.insert(sku.clone());
                    self.watched.insert(sku, now);
                }
            }
        }
        let wait = (self.to_read.is_empty() && !self.claim_due(now)).then(|| {
            // Not past the next sweep slice or claim round.
            let mut wait = Duration::from_millis(block_ms as u64);
            if let Some(at) = self.swept_at {
                wait = wait.min((at + self.limits.sweep_interval).saturating_duration_since(now));
            }
            if let (Some(at), false) = (self.claimed_at, self.watched.is_empty()) {
                wait = wait.min((at + self.claim_every()).saturating_duration_since(now));
            }
            usize::try_from(wait.as_millis()).unwrap_or(block_ms)
        });
        let hinted = self
            .consumer
            .hints(&mut self.hints, HINT_ENTRIES_PER_READ, wait)
            .await?;
        self.to_read.extend(hinted);
        Ok(())
    }

    /// Claims are due every half claim-idle time while any SKU is watched.
    fn claim_due(&self, now: Instant) -> bool {
        (!self.watched.is_empty() || !self.unknown.is_empty())
            && self
                .claimed_at
                .is_none_or(|at| now.duration_since(at) >= self.claim_every())
    }

    fn claim_every(&self) -> Duration {
        Duration::from_millis(self.limits.claim_idle_ms as u64 / 2)
    }

    /// How long a SKU stays watched after its last events: long enough for
    /// a claim round to come after a dead consumer's entries turn idle.
    fn watch_for(&self) -> Duration {
        Duration::from_millis(2 * self.limits.claim_idle_ms as u64).max(Duration::from_secs(1))
    }

    /// Claims or reads what `learn` found, applies it, acknowledges.
    async fn work(&mut self) -> Result<ApplyReport, WorkerError> {
        let now = Instant::now();
        let mut delivered = Deliveries::default();
        if self.claim_due(now) {
            let watch_for = self.watch_for();
            self.watched
                .retain(|_, at| now.duration_since(*at) < watch_for);
            // Our own pending entries count too: a batch that failed to
            // commit is retried from here after the idle time.
            let skus: Vec<SkuId> = self
                .watched
                .keys()
                .chain(&self.unknown)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            delivered = self
                .consumer
                .claim_idle(
                    &skus,
                    self.limits.claim_idle_ms,
                    self.limits.batch_max_events,
                )
                .await?;
            self.claimed_at = Some(now);
        }
        if delivered.entries.is_empty() && !self.to_read.is_empty() {
            let mut skus = Vec::new();
            while skus.len() < MAX_STREAMS_PER_READ {
                let Some(sku) = self.to_read.pop_first() else {
                    break;
                };
                skus.push(sku);
            }
            let per_stream = (self.limits.batch_max_events / skus.len()).max(1);
            let read = match self.consumer.read_new(&skus, per_stream).await {
                Ok(read) => read,
                Err(error) => {
                    self.to_read.extend(skus);
                    return Err(error.into());
                }
            };
            // A stream that filled its share may hold more: read it again.
            let mut per_sku: HashMap<&SkuId, usize> = HashMap::new();
            for entry in &read.entries {
                *per_sku.entry(&entry.sku).or_default() += 1;
            }
            for (sku, entries) in &per_sku {
                if *entries >= per_stream {
                    self.to_read.insert((*sku).clone());
                }
            }
            // Nothing new where a hint pointed: another consumer took it. If
            // entries are left there, they are that consumer's; watch the
            // stream, so that they are claimed should it die.
            let empty_handed: Vec<SkuId> = skus
                .iter()
                .filter(|sku| !per_sku.contains_key(sku) && !read.gone.contains(sku))
                .cloned()
                .collect();
            let lengths = self.app.gate.backlogs(&empty_handed).await?;
            for (sku, length) in empty_handed.into_iter().zip(lengths) {
                if length > 0 {
                    self.watched.insert(sku, now);
                }
            }
            delivered.gone.extend(read.gone);
            delivered.entries = read.entries;
        }
        for sku in &delivered.gone {
            // Dropped from the gate, or rebuilt (which empties the stream
            // into the ledger first): nothing left to read there.
            self.to_read.remove(sku);
            self.watched.remove(sku);
            if self.unknown.remove(sku) {
                self.app.set_unknown_skus(self.unknown.clone());
            }
        }
        if delivered.entries.is_empty() {
            return Ok(ApplyReport::default());
        }

        // Deliveries say which SKUs moved and how far; what is applied is
        // read back from each stream in order from the ledger's position.
        // A dead consumer's claimed entries can arrive after newer ones were
        // applied, so applying deliveries as they come could leave a gap.
        let now = Instant::now();
        let mut events: BTreeMap<SkuId, Vec<Event>> = BTreeMap::new();
        let mut acks: BTreeMap<SkuId, Vec<Position>> = BTreeMap::new();
        for entry in delivered.entries {
            let (sku, id) = (entry.sku, entry.position.stream_id());
            match entry.events {
                Ok(entry_events) => events.entry(sku.clone()).or_default().extend(entry_events),
                Err(error) => tracing::error!(%sku, %id, %error, "unreadable event"),
            }
            acks.entry(sku).or_default().push(entry.position);
        }
        for (sku, events) in &mut events {
            events.sort_by_key(|e| e.position);
            self.watched.insert(sku.clone(), now);
        }
        let (report, unknown) = self.apply_up_to(events).await?;
        // An event leaves the stream only once the ledger has it: events of
        // a SKU the ledger does not know stay pending, and the SKU stays
        // unknown until a batch of it applies.
        for sku in acks.keys() {
            if unknown.contains(sku) {
                self.unknown.insert(sku.clone());
            } else {
                self.unknown.remove(sku);
            }
        }
        self.app.set_unknown_skus(self.unknown.clone());
        acks.retain(|sku, _| !unknown.contains(sku));

        for (sku, positions) in &acks {
            self.consumer.ack(sku, positions).await?;
        }
        for sku in acks.keys() {
            if self.app.gate.trim_events(sku).await?.left == 0 {
                // An empty stream has nothing pending for anyone: nothing
                // to claim there until it moves again.
                self.watched.remove(sku);
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
            metrics::histogram!(metric::WORKER_COMMIT_DURATION_SECONDS)
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(
                events = report.applied,
                commit_ms = started.elapsed().as_millis() as u64,
                "batch committed"
            );
            metrics::histogram!(metric::WORKER_BATCH_EVENTS)
                .record(batch.values().map(Vec::len).sum::<usize>() as f64);
            if let Some(oldest) = batch.values().flatten().map(|e| e.occurred_at_ms).min() {
                self.app.record_commit_lag(oldest);
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
                                    metrics::counter!(
                                        crate::telemetry::metric::LEDGER_DEAD_LETTERS_TOTAL
                                    )
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
                hold_id: HoldId::from_uuid(uuid::Uuid::nil()),
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
