//! Batched admission per SKU, with no timer. While a script call admits for
//! a SKU, later admissions for it queue; when the call returns, the queue
//! (up to the batch limit) goes out in one call of `admit_batch.lua`, led by
//! the first of them. At low load every call carries one admission and
//! nothing waits; under load batches grow by themselves (group commit).
//!
//! The request that finds the SKU idle runs its own call, and whoever's
//! call returns hands the queue on to the request at its head, which leads
//! the next call and answers the others. A call of one admission runs in
//! its request, so a client that goes away cancels only its own; a call
//! carrying others runs in a task of its own, so it completes, answers
//! them and hands on whatever becomes of its leader's client.

use super::admit::{Admit, AdmitReply};
use super::admit_batch::AdmitBatch;
use super::script::Fenced;
use super::{Gate, GateError};
use crate::domain::SkuId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Admissions waiting for one SKU at most; beyond, `unavailable` at once.
/// `DROPGATE_MAX_IN_FLIGHT` bounds them first in practice.
const QUEUE_MAX_PER_SKU: usize = 65_536;

/// Default admissions per script call (`DROPGATE_ADMIT_BATCH_MAX`).
pub const DEFAULT_ADMIT_BATCH_MAX: usize = 128;

#[derive(Debug)]
pub(super) struct Batcher {
    /// Admissions per script call at most; 1 turns batching off.
    max: usize,
    lanes: Mutex<HashMap<SkuId, Lane>>,
}

#[derive(Debug, Default)]
struct Lane {
    /// A call admitting for the SKU is in flight.
    busy: bool,
    queue: VecDeque<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    request: Admit,
    turn: oneshot::Sender<Turn>,
}

#[derive(Debug)]
enum Turn {
    /// The admission was decided in another request's call.
    Done(Result<Fenced<AdmitReply>, GateError>),
    /// Run the next call: this admission first, then these.
    Lead(Vec<Waiting>),
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new(DEFAULT_ADMIT_BATCH_MAX)
    }
}

impl Batcher {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            lanes: Mutex::default(),
        }
    }

    /// The queue goes to the request at its head, or the SKU goes idle.
    fn hand_on(&self, sku: &SkuId) {
        let Ok(mut lanes) = self.lanes.lock() else {
            return;
        };
        let Some(lane) = lanes.get_mut(sku) else {
            return;
        };
        while let Some(first) = lane.queue.pop_front() {
            let take = lane.queue.len().min(self.max - 1);
            let rest: Vec<Waiting> = lane.queue.drain(..take).collect();
            match first.turn.send(Turn::Lead(rest)) {
                Ok(()) => return,
                // Its request was dropped: the next one leads.
                Err(Turn::Lead(rest)) => {
                    for waiting in rest.into_iter().rev() {
                        lane.queue.push_front(waiting);
                    }
                }
                Err(Turn::Done(_)) => {}
            }
        }
        lanes.remove(sku);
    }
}

/// Hands the SKU's queue on when the leading request is done, or dropped.
struct HandOn<'a> {
    batcher: &'a Batcher,
    sku: &'a SkuId,
}

impl Drop for HandOn<'_> {
    fn drop(&mut self) {
        self.batcher.hand_on(self.sku);
    }
}

impl Gate {
    /// Admits through the SKU's batches (see the module).
    pub(super) async fn admit_batched(
        &self,
        request: &Admit,
    ) -> Result<Fenced<AdmitReply>, GateError> {
        let batcher = &self.batcher;
        if batcher.max == 1 {
            record_batch_size(1);
            return self.run(request).await;
        }
        let waiting = {
            let mut lanes = batcher
                .lanes
                .lock()
                .map_err(|_| GateError::protocol("admission lanes poisoned"))?;
            let lane = lanes.entry(request.sku.clone()).or_default();
            if lane.busy {
                if lane.queue.len() >= QUEUE_MAX_PER_SKU {
                    return Err(GateError::Overloaded);
                }
                let (turn, waiting) = oneshot::channel();
                lane.queue.push_back(Waiting {
                    request: request.clone(),
                    turn,
                });
                Some(waiting)
            } else {
                lane.busy = true;
                None
            }
        };
        let others = match waiting {
            None => Vec::new(),
            Some(waiting) => match waiting.await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead(others)) => others,
                // The call that carried it never answered (its task
                // failed): whether it was decided is unknown.
                Err(_) => return Err(GateError::Abandoned),
            },
        };
        if others.is_empty() {
            let _hand_on = HandOn {
                batcher,
                sku: &request.sku,
            };
            record_batch_size(1);
            return self.run(request).await;
        }
        // A batch runs in a task of its own: the leader's client going away
        // mid-call must neither cut the others' admissions short nor leave
        // them unanswered.
        let gate = self.clone();
        let request = request.clone();
        crate::telemetry::spawn_scoped(async move { gate.lead(request, others).await })
            .await
            .unwrap_or_else(|_| Err(GateError::protocol("admission batch task failed")))
    }

    /// Runs one batch call, `request` first, and answers the others.
    async fn lead(
        &self,
        request: Admit,
        others: Vec<Waiting>,
    ) -> Result<Fenced<AdmitReply>, GateError> {
        let _hand_on = HandOn {
            batcher: &self.batcher,
            sku: &request.sku,
        };
        record_batch_size(1 + others.len());
        let batch = AdmitBatch {
            sku: request.sku.clone(),
            admissions: std::iter::once(request.clone())
                .chain(others.iter().map(|w| w.request.clone()))
                .collect(),
            backlog_limit: request.backlog_limit,
        };
        match self.run(&batch).await {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                let mine = replies
                    .next()
                    .ok_or_else(|| GateError::protocol("admit_batch: no reply"))?;
                for (waiting, reply) in others.into_iter().zip(replies) {
                    let _ = waiting.turn.send(Turn::Done(Ok(reply)));
                }
                Ok(mine)
            }
            Err(error) => {
                let error = Arc::new(error);
                for waiting in others {
                    let _ = waiting
                        .turn
                        .send(Turn::Done(Err(GateError::Batch(error.clone()))));
                }
                Err(GateError::Batch(error))
            }
        }
    }
}

fn record_batch_size(size: usize) {
    metrics::histogram!(crate::telemetry::metric::ADMIT_BATCH_SIZE).record(size as f64);
}
