//! Sold-out at the edge. Once the gate has answered that a SKU has 0
//! available, this gatekeeper remembers it and answers `sold_out` itself,
//! after one plain `GET` of the request's idempotency record (a key that got
//! a hold still replays it). Holds only ever come from the script.
//!
//! Whatever brings units back (release, expiry, lost hold, adjustment, `PUT`,
//! repair, rebuild) publishes the SKU on `<prefix>:units-back`, and every
//! gatekeeper forgets it at once. Flags are kept only while the
//! subscription is live: a dropped subscription or a reconnect forgets every
//! flag, and a flag is never older than the cache's maximum age anyway. A
//! false `sold_out` for a few milliseconds is acceptable; a hold beyond
//! stock never is.

use super::{Gate, GateError};
use crate::domain::{Admission, SkuId, decode_outcome};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the subscriber waits before subscribing again after a failure.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);

/// The SKUs this gatekeeper knows to have 0 available.
#[derive(Debug, Default)]
pub struct SoldOutCache {
    /// A flag older than this is ignored; zero turns the cache off.
    max_age: Duration,
    flags: Mutex<HashMap<SkuId, Flag>>,
    /// Bumped by every message and every (re)subscription. A script call
    /// that began before a bump sets no flag: the units it found gone may
    /// have come back while it was answered.
    generation: AtomicU64,
    /// True while the subscription is live; flags are set only then.
    live: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Flag {
    at: Instant,
    /// The `Retry-After` the gate gave then; counted down from `at`.
    retry_after_ms: Option<i64>,
}

impl SoldOutCache {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            ..Self::default()
        }
    }

    fn enabled(&self) -> bool {
        !self.max_age.is_zero()
    }

    /// The generation to pass to [`flag`](Self::flag) for a call starting now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Remembers that `sku` has 0 available, as a call that began at
    /// `generation` found; ignored if anything came back since.
    pub fn flag(&self, sku: &SkuId, retry_after_ms: Option<i64>, generation: u64) {
        if !self.enabled() || !self.live.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut flags) = self.flags.lock() {
            // Checked under the lock that `forget` takes after bumping.
            if self.generation() == generation {
                let at = Instant::now();
                flags.insert(sku.clone(), Flag { at, retry_after_ms });
            }
        }
    }

    /// `Some(retry_after_ms)` while `sku` is known sold out: the `Retry-After`
    /// the gate gave, less the time since (at least a second, as the script
    /// answers).
    pub fn sold_out(&self, sku: &SkuId) -> Option<Option<i64>> {
        let flag = *self.flags.lock().ok()?.get(sku)?;
        let age = flag.at.elapsed();
        if age >= self.max_age {
            return None;
        }
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Some(flag.retry_after_ms.map(|ms| (ms - age_ms).max(1000)))
    }

    /// Whether `sku` is known sold out now.
    pub fn is_flagged(&self, sku: &SkuId) -> bool {
        self.sold_out(sku).is_some()
    }

    /// Whether the units-back subscription is live (flags are set only then).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Units came back to `sku`, or to every SKU (`None`: the subscription
    /// was lost or made anew).
    fn forget(&self, sku: Option<&SkuId>) {
        if let Ok(mut flags) = self.flags.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            match sku {
                Some(sku) => {
                    flags.remove(sku);
                }
                None => flags.clear(),
            }
        }
    }

    /// Units may have come back to `sku` by a call this gatekeeper made:
    /// its own flag goes at once, before the message comes round.
    pub(super) fn units_back(&self, sku: &SkuId) {
        if self.enabled() {
            self.forget(Some(sku));
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.forget(None);
    }
}

impl Gate {
    /// The answer to an admission for a SKU this gatekeeper knows sold out,
    /// without the script: the key's hold replayed, `KeyReused` for another
    /// body, else `sold_out`. `None` when the SKU is not known sold out.
    pub(super) async fn admit_at_edge(
        &self,
        sku: &SkuId,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Admission>, GateError> {
        let Some(retry_after_ms) = self.sold_out.sold_out(sku) else {
            return Ok(None);
        };
        let record: Option<String> = redis::cmd("GET")
            .arg(self.keys().idempotency(sku, key))
            .query_async(&mut self.conn.clone())
            .await?;
        let held = record.as_deref().and_then(|record| {
            let (first, outcome) = record.split_once('|')?;
            Some((first == fingerprint, decode_outcome(outcome)?))
        });
        metrics::counter!(crate::telemetry::metric::ADMISSIONS_AT_EDGE_TOTAL).increment(1);
        Ok(Some(match held {
            Some((true, first)) => Admission::Replayed(Box::new(first)),
            Some((false, _)) => Admission::KeyReused,
            // No record, or a rejection's record an older version stored.
            None => Admission::SoldOut { retry_after_ms },
        }))
    }

    /// The gatekeeper's sold-out flags (see the module).
    pub fn sold_out_cache(&self) -> &SoldOutCache {
        &self.sold_out
    }

    /// Follows `<prefix>:units-back` until `stop`, forgetting each SKU whose
    /// units came back; subscribes again whenever the subscription drops,
    /// forgetting every flag. Does nothing while the cache is off.
    pub async fn follow_units_back_until(&self, mut stop: watch::Receiver<bool>) {
        if !self.sold_out.enabled() {
            return;
        }
        let channel = self.keys().units_back();
        while !*stop.borrow() {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        self.sold_out.set_live(true);
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(message) => match message.get_payload::<String>() {
                                        Ok(sku) => match SkuId::parse(&sku) {
                                            Ok(sku) => self.sold_out.forget(Some(&sku)),
                                            Err(_) => self.sold_out.forget(None),
                                        },
                                        Err(_) => self.sold_out.forget(None),
                                    },
                                    None => {
                                        tracing::warn!("units-back subscription lost; sold-out flags forgotten");
                                        break;
                                    }
                                },
                                _ = stop.changed() => break,
                            }
                        }
                        self.sold_out.set_live(false);
                    }
                    Err(error) => tracing::warn!(%error, "cannot subscribe to units-back"),
                },
                Err(error) => tracing::warn!(%error, "cannot open the units-back subscription"),
            }
            tokio::select! {
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
