//! Activity hints: which SKUs the background services have work on, so that
//! a catalogue of thousands of idle SKUs costs (almost) nothing.
//!
//! Two hints, both kept in Redis so that every process sees them:
//!
//! * `<prefix>:activity`, a capped stream. Each entry names SKUs whose event
//!   streams got new events. The commit worker blocks on it (`XREAD BLOCK`)
//!   and reads only the SKU streams it names; the reconciler reads it from
//!   its own cursor each pass and checks the SKUs it names.
//! * `<prefix>:due`, a sorted set SKU → the earliest time a hold of the SKU
//!   may fall due. The reaper asks it for the SKUs due now and expires only
//!   those.
//!
//! **Who writes them, and why not the scripts.** A script that appends an
//! event (admit, settle, extend, a stock change, expire) is the natural
//! place to note the activity, but with Redis Cluster a script may only
//! touch keys of its own SKU's slot, and a global key is in another slot.
//! So the gatekeeper notes each script's activity after the script
//! returns, in a local set ([`ActivityLog`]: a mutex and a set insert per
//! request, no Redis command), and publishes the set at most once per
//! [`PUBLISH_INTERVAL`]: one `XADD` and one `ZADD LT` for every SKU that
//! moved in the interval, not one command per request. The first hint
//! after a quiet spell is published at once, so a lone admission is
//! committed within a round trip or two; under load the interval
//! batches. (Blocking reads across every SKU stream would need no hint at
//! all, but cost a command naming every stream per read, and cannot span
//! slots in Cluster; keyspace notifications are fire-and-forget and lost
//! by any reader that is not connected at that moment.)
//!
//! A stream rather than a set for new events: a blocked worker wakes the
//! moment a hint lands, every worker sees every hint (plain `XREAD`, no
//! group), so each can claim what a dead one left, and a reader that
//! restarts reads the recent past from the stream. A sorted set for due
//! times: the reaper's question is a range by score, and `ZADD LT` keeps
//! the earliest time whoever writes.
//!
//! **Hints may be lost, work may not.** A gatekeeper that dies between a
//! script and its next publish loses that interval's hints; a reader that
//! falls further behind than the stream's cap loses older ones; the due
//! set may be lost with Redis. None of that loses work: the events stay in
//! their streams and the holds in their expiry indexes, and each service
//! also sweeps the whole catalogue slowly ([`crate::sweep`]), a bounded
//! number of SKUs per pass, which finds whatever a lost hint left behind.
//! A lost hint delays work by at most one sweep round. A failed publish
//! keeps its hints and is retried.

use super::keys::Keys;
use super::{Gate, GateConnection, GateError};
use crate::domain::SkuId;
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often, at most, a gatekeeper publishes its hints: bounds both the
/// commands spent on hints under load and how late a hint can be.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(10);

/// Entries the activity stream keeps (approximately: `MAXLEN ~`). At one
/// entry per gatekeeper per interval, minutes of a busy drop; a reader
/// further behind than that relies on the sweep.
const ACTIVITY_STREAM_MAX_ENTRIES: usize = 10_000;

/// SKUs named by one activity entry, so one busy interval cannot make an
/// entry of unbounded size.
const SKUS_PER_ENTRY: usize = 500;

/// The field of an activity entry: SKU ids, space-separated (a SKU id has
/// no spaces).
const SKUS_FIELD: &str = "skus";

/// What one script call left for the background services.
#[derive(Debug, Clone, Copy)]
pub struct Activity<'a> {
    /// The SKU whose event stream got at least one event.
    pub sku: &'a SkuId,
    /// When a hold the call created may fall due, if it created one.
    pub due_ms: Option<i64>,
}

/// Hints noted in this process and not yet published.
#[derive(Debug, Default)]
pub(super) struct ActivityLog {
    pending: Mutex<Pending>,
    /// Wakes the publisher when a hint comes in after a quiet spell.
    arrived: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    events: HashSet<SkuId>,
    due: HashMap<SkuId, i64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.due.is_empty()
    }

    fn merge(&mut self, other: Pending) {
        self.events.extend(other.events);
        for (sku, at) in other.due {
            let earliest = self.due.entry(sku).or_insert(at);
            *earliest = (*earliest).min(at);
        }
    }
}

impl ActivityLog {
    pub(super) fn record(&self, activity: Activity<'_>) {
        self.note(|pending| {
            if !pending.events.contains(activity.sku) {
                pending.events.insert(activity.sku.clone());
            }
            if let Some(at) = activity.due_ms {
                note_due(pending, activity.sku, at);
            }
        });
    }

    pub(super) fn due(&self, sku: &SkuId, at_ms: i64) {
        self.note(|pending| note_due(pending, sku, at_ms));
    }

    fn note(&self, change: impl FnOnce(&mut Pending)) {
        let was_empty = match self.pending.lock() {
            Ok(mut pending) => {
                let was_empty = pending.is_empty();
                change(&mut pending);
                was_empty
            }
            // A panic while holding the lock: hints are only hints, and the
            // sweep finds what they would have said.
            Err(_) => return,
        };
        if was_empty {
            self.arrived.notify_one();
        }
    }

    fn take(&self) -> Pending {
        self.pending
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending))
            .unwrap_or_default()
    }

    /// Keeps hints a publish failed to write, and has the publisher try
    /// again.
    fn put_back(&self, unpublished: Pending) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.merge(unpublished);
        }
        self.arrived.notify_one();
    }
}

fn note_due(pending: &mut Pending, sku: &SkuId, at_ms: i64) {
    match pending.due.get_mut(sku) {
        Some(earliest) => *earliest = (*earliest).min(at_ms),
        None => {
            pending.due.insert(sku.clone(), at_ms);
        }
    }
}

/// Where a reader is in the activity stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityCursor(String);

impl ActivityCursor {
    /// From the oldest entry the stream still keeps: a reader that starts
    /// catches up with the recent past.
    pub fn start() -> Self {
        Self("0-0".to_owned())
    }
}

impl Default for ActivityCursor {
    fn default() -> Self {
        Self::start()
    }
}

impl Gate {
    /// Notes that a hold of `sku` falls due at `at_ms`; published with the
    /// other hints.
    pub fn hint_due(&self, sku: &SkuId, at_ms: i64) {
        self.activity.due(sku, at_ms);
    }

    /// Publishes the hints noted in this process since the last publish:
    /// one `XADD` per [`SKUS_PER_ENTRY`] SKUs and one `ZADD LT`, in one
    /// round trip; nothing when there is nothing to say. Returns how many
    /// SKUs it named. On failure the hints are kept for the next try.
    pub async fn publish_activity(&self) -> Result<usize, GateError> {
        let pending = self.activity.take();
        if pending.is_empty() {
            return Ok(0);
        }
        let k = self.keys();
        let mut pipe = redis::pipe();
        let events: Vec<&str> = pending.events.iter().map(SkuId::as_str).collect();
        for chunk in events.chunks(SKUS_PER_ENTRY) {
            pipe.cmd("XADD")
                .arg(k.activity())
                .arg("MAXLEN")
                .arg("~")
                .arg(ACTIVITY_STREAM_MAX_ENTRIES)
                .arg("*")
                .arg(SKUS_FIELD)
                .arg(chunk.join(" "))
                .ignore();
        }
        if !pending.due.is_empty() {
            let zadd = pipe.cmd("ZADD").arg(k.due()).arg("LT");
            for (sku, at) in &pending.due {
                zadd.arg(*at).arg(sku.as_str());
            }
            zadd.ignore();
        }
        let named = pending.events.len().max(pending.due.len());
        match pipe.query_async::<()>(&mut self.conn.clone()).await {
            Ok(()) => Ok(named),
            Err(error) => {
                self.activity.put_back(pending);
                Err(error.into())
            }
        }
    }

    /// Publishes hints as they come, at most once per [`PUBLISH_INTERVAL`],
    /// until `stop` turns true (then once more). Waits for a hint when there
    /// is none, so a quiet process spends nothing here.
    pub async fn publish_activity_until(&self, mut stop: watch::Receiver<bool>) {
        let mut backoff = PUBLISH_INTERVAL;
        while !*stop.borrow() {
            tokio::select! {
                _ = self.activity.arrived.notified() => {}
                _ = stop.changed() => break,
            }
            match self.publish_activity().await {
                Ok(_) => backoff = PUBLISH_INTERVAL,
                Err(error) => {
                    tracing::warn!(%error, "activity hints not published; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
        }
        if let Err(error) = self.publish_activity().await {
            tracing::warn!(%error, "activity hints not published at stop; the sweep will find the work");
        }
    }

    /// SKUs named in the activity stream after `cursor`, which moves on;
    /// at most `entries` entries, without waiting.
    pub async fn hints(
        &self,
        cursor: &mut ActivityCursor,
        entries: usize,
    ) -> Result<Vec<SkuId>, GateError> {
        read_hints(&self.conn, self.keys(), cursor, entries, None).await
    }

    /// SKUs whose holds may be due at `now_ms`, earliest first, at most
    /// `limit`.
    pub async fn due_skus(&self, now_ms: i64, limit: usize) -> Result<Vec<SkuId>, GateError> {
        let names: Vec<String> = self
            .conn
            .clone()
            .zrangebyscore_limit(self.keys().due(), "-inf", now_ms, 0, limit as isize)
            .await?;
        Ok(names
            .iter()
            .filter_map(|name| SkuId::parse(name).ok())
            .collect())
    }

    /// Takes SKUs off the due set before the reaper expires their holds:
    /// a hint published after this (a hold admitted meanwhile) is kept, and
    /// the reaper hints the SKU's next due time itself when it is done.
    pub async fn take_due(&self, skus: &[SkuId]) -> Result<(), GateError> {
        if skus.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = skus.iter().map(SkuId::as_str).collect();
        let _: u64 = self.conn.clone().zrem(self.keys().due(), names).await?;
        Ok(())
    }

    /// The earliest expiry in each SKU's expiry index, in `skus` order
    /// (`None`: no live hold). One round trip.
    pub async fn earliest_expiries(&self, skus: &[SkuId]) -> Result<Vec<Option<i64>>, GateError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sku in skus {
            pipe.zrange_withscores(self.keys().expiry(sku), 0, 0);
        }
        let firsts: Vec<Vec<(String, f64)>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(firsts
            .into_iter()
            .map(|first| first.first().map(|(_, at)| *at as i64))
            .collect())
    }

    /// One step of a scan over the SKU registry: the SKUs of about `count`
    /// entries after `cursor`, and the cursor to go on from (0: the scan is
    /// complete). Every SKU registered for the whole scan is returned at
    /// least once.
    pub async fn scan_skus(
        &self,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<SkuId>), GateError> {
        let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(self.keys().registry())
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut skus = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let (Ok(no), Ok(sku)) = (pair[0].parse::<u32>(), SkuId::parse(&pair[1])) else {
                continue;
            };
            self.remember(no, sku.clone());
            skus.push(sku);
        }
        Ok((next, skus))
    }
}

/// Reads hints after `cursor` on `conn`, waiting up to `block_ms` for the
/// first when there are none (`None`: not at all).
pub(super) async fn read_hints(
    conn: &GateConnection,
    keys: Keys<'_>,
    cursor: &mut ActivityCursor,
    entries: usize,
    block_ms: Option<usize>,
) -> Result<Vec<SkuId>, GateError> {
    let mut options = StreamReadOptions::default().count(entries.max(1));
    if let Some(block_ms) = block_ms {
        // BLOCK 0 would wait forever.
        options = options.block(block_ms.max(1));
    }
    let reply: Option<StreamReadReply> = conn
        .clone()
        .xread_options(&[keys.activity()], &[cursor.0.as_str()], &options)
        .await?;
    let mut skus = Vec::new();
    for stream in reply.map(|r| r.keys).unwrap_or_default() {
        for entry in stream.ids {
            let names: Option<String> = entry.get(SKUS_FIELD);
            skus.extend(
                names
                    .unwrap_or_default()
                    .split(' ')
                    .filter_map(|name| SkuId::parse(name).ok()),
            );
            cursor.0 = entry.id;
        }
    }
    Ok(skus)
}
