//! The SKU event streams, as the ledger's side reads them: ranges for
//! inline flushes, backlogs for the dashboard and the worker's sweep, and
//! the commit worker's consumer (activity hints, group reads of the streams
//! they name, claims of what dead consumers left, acks).

use super::GateConnection;
use super::activity::{ActivityCursor, read_hints};
use super::keys::Keys;
use super::{CONSUMER_GROUP, Gate, GateError, reply};
use crate::domain::{Event, Position, SkuId};
use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadOptions,
    StreamReadReply,
};
use std::collections::HashMap;
use std::sync::Arc;

impl Gate {
    /// Events of a SKU after `after` (exclusive) up to `up_to` (inclusive).
    pub async fn events(
        &self,
        sku: &SkuId,
        after: Position,
        up_to: Option<Position>,
        count: usize,
    ) -> Result<Vec<Event>, GateError> {
        let end = up_to.map_or_else(|| "+".to_owned(), Position::stream_id);
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrange_count(self.keys().events(sku), after_bound(after), end, count)
            .await?;
        let mut events = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            events.extend(reply::events(&entry.id, &entry.map)?);
        }
        Ok(events)
    }

    /// Entries in each SKU's stream, in `skus` order: events not yet
    /// committed, or committed and not yet trimmed. One round trip.
    pub async fn backlogs(&self, skus: &[SkuId]) -> Result<Vec<u64>, GateError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sku in skus {
            pipe.xlen(self.keys().events(sku));
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// A consumer named `name` in the commit worker's group, on a connection
    /// of its own: a blocking read on the shared, pipelined connection would
    /// stall every request queued behind it.
    pub fn consumer(&self, name: &str) -> Result<Consumer, GateError> {
        let conn =
            GateConnection::new(self.client.clone(), super::connection_config(self.timeout))?;
        Ok(Consumer {
            conn,
            prefix: Arc::clone(&self.prefix),
            name: name.to_owned(),
            max_block_ms: usize::try_from(self.timeout.as_millis() / 2).unwrap_or(usize::MAX),
        })
    }
}

/// The XRANGE start bound for "everything after this position". Sequence
/// -1 stands before `<epoch>-0`, the first id of an epoch.
fn after_bound(after: Position) -> String {
    if after.seq < 0 {
        format!("{}-0", after.epoch)
    } else {
        format!("({}-{}", after.epoch, after.seq)
    }
}

/// One stream entry delivered to a consumer.
#[derive(Debug)]
pub struct Delivery {
    pub sku: SkuId,
    /// Where the entry sits; what [`Consumer::ack`] takes.
    pub position: Position,
    /// The entry's events (one, or a batch of admissions), or why the
    /// entry could not be read.
    pub events: Result<Vec<Event>, GateError>,
}

/// What a group read or a claim delivered.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub entries: Vec<Delivery>,
    /// SKUs whose stream or consumer group does not exist (`NOGROUP`): a
    /// SKU dropped from the gate, or being rebuilt. Nothing to read there.
    pub gone: Vec<SkuId>,
}

/// A member of the commit worker's consumer group on every SKU stream.
pub struct Consumer {
    conn: GateConnection,
    prefix: Arc<str>,
    name: String,
    /// Longest a blocking read may wait: half the store timeout, which is
    /// the connection's response timeout.
    max_block_ms: usize,
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Keys<'_> {
        Keys::new(&self.prefix)
    }

    /// SKUs named by activity hints after `cursor`, which moves on: at
    /// most `entries` entries, waiting up to `block_ms` (capped at half the
    /// store timeout) for the first when there are none, or not at all.
    pub async fn hints(
        &self,
        cursor: &mut ActivityCursor,
        entries: usize,
        block_ms: Option<usize>,
    ) -> Result<Vec<SkuId>, GateError> {
        let block_ms = block_ms.map(|ms| ms.min(self.max_block_ms));
        read_hints(&self.conn, self.keys(), cursor, entries, block_ms).await
    }

    /// Claims, for this consumer, up to `count` entries per stream that were
    /// delivered at least `min_idle_ms` ago and never acknowledged: what a
    /// dead consumer left, or a batch of ours that failed to commit.
    pub async fn claim_idle(
        &self,
        skus: &[SkuId],
        min_idle_ms: usize,
        count: usize,
    ) -> Result<Deliveries, GateError> {
        let mut conn = self.conn.clone();
        let mut deliveries = Deliveries::default();
        for sku in skus {
            let reply: StreamAutoClaimReply = match conn
                .xautoclaim_options(
                    self.keys().events(sku),
                    CONSUMER_GROUP,
                    &self.name,
                    min_idle_ms,
                    "0-0",
                    StreamAutoClaimOptions::default().count(count),
                )
                .await
            {
                Ok(reply) => reply,
                Err(error) if is_no_group(&error) => {
                    deliveries.gone.push(sku.clone());
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            for entry in reply.claimed {
                deliveries.entries.push(delivery(sku.clone(), &entry)?);
            }
        }
        Ok(deliveries)
    }

    /// New entries across the streams of `skus` (XREADGROUP `>`), at most
    /// `count` per stream, without waiting. One command for all of them;
    /// should one stream be gone, stream by stream.
    pub async fn read_new(&self, skus: &[SkuId], count: usize) -> Result<Deliveries, GateError> {
        match self.read_group(skus, count).await {
            Err(GateError::Redis(error)) if is_no_group(&error) => {}
            read => {
                return read.map(|entries| Deliveries {
                    entries,
                    gone: Vec::new(),
                });
            }
        }
        let mut deliveries = Deliveries::default();
        for sku in skus {
            match self.read_group(std::slice::from_ref(sku), count).await {
                Ok(entries) => deliveries.entries.extend(entries),
                Err(GateError::Redis(error)) if is_no_group(&error) => {
                    deliveries.gone.push(sku.clone());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(deliveries)
    }

    async fn read_group(&self, skus: &[SkuId], count: usize) -> Result<Vec<Delivery>, GateError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let streams: HashMap<String, &SkuId> = skus
            .iter()
            .map(|sku| (self.keys().events(sku), sku))
            .collect();
        let keys: Vec<&String> = streams.keys().collect();
        let ids = vec![">"; keys.len()];
        let options = StreamReadOptions::default()
            .group(CONSUMER_GROUP, &self.name)
            .count(count);
        let reply: Option<StreamReadReply> = self
            .conn
            .clone()
            .xread_options(&keys, &ids, &options)
            .await?;
        let mut deliveries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let sku = streams.get(&stream.key).ok_or_else(|| {
                GateError::protocol(format!("read an unasked stream {}", stream.key))
            })?;
            for entry in &stream.ids {
                deliveries.push(delivery((*sku).clone(), entry)?);
            }
        }
        Ok(deliveries)
    }

    /// Acknowledges entries of a SKU's stream: they leave the pending list,
    /// and `trim` may drop them.
    pub async fn ack(&self, sku: &SkuId, positions: &[Position]) -> Result<(), GateError> {
        if positions.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = positions.iter().map(|p| p.stream_id()).collect();
        let _: u64 = self
            .conn
            .clone()
            .xack(self.keys().events(sku), CONSUMER_GROUP, &ids)
            .await?;
        Ok(())
    }
}

/// `NOGROUP`: the stream, or its consumer group, does not exist.
fn is_no_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

fn delivery(sku: SkuId, entry: &StreamId) -> Result<Delivery, GateError> {
    let position = Position::parse(&entry.id)
        .ok_or_else(|| GateError::protocol(format!("stream id {:?}", entry.id)))?;
    Ok(Delivery {
        sku,
        position,
        events: reply::events(&entry.id, &entry.map),
    })
}
