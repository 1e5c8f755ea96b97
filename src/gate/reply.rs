//! Turning script replies, hashes and stream entries into typed values.

use super::GateError;
use crate::domain::{Change, Event, HoldId, HoldState, Position};
use redis::Value;
use std::collections::HashMap;
use uuid::Uuid;

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A script's reply: a flat list of name, value pairs (`{'outcome', 'held',
/// 'hold_id', …}`), read by name so the scripts and their readers never
/// depend on an order.
pub(super) struct Fields {
    script: &'static str,
    values: HashMap<String, Value>,
}

impl Fields {
    pub(super) fn parse(script: &'static str, reply: Value) -> Result<Self, GateError> {
        let bad = || GateError::protocol(format!("{script}: reply is not a list of name, value"));
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        if !items.len().is_multiple_of(2) {
            return Err(bad());
        }
        let mut values = HashMap::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            values.insert(text(&name).ok_or_else(bad)?, value);
        }
        Ok(Self { script, values })
    }

    fn missing(&self, name: &str, what: &str) -> GateError {
        GateError::protocol(format!(
            "{}: reply field {name:?} is not {what}",
            self.script
        ))
    }

    pub(super) fn outcome(&self) -> Result<String, GateError> {
        self.text("outcome")
    }

    pub(super) fn text(&self, name: &str) -> Result<String, GateError> {
        self.values
            .get(name)
            .and_then(text)
            .ok_or_else(|| self.missing(name, "text"))
    }

    pub(super) fn int(&self, name: &str) -> Result<i64, GateError> {
        self.values
            .get(name)
            .and_then(int)
            .ok_or_else(|| self.missing(name, "an integer"))
    }

    pub(super) fn unsigned(&self, name: &str) -> Result<u64, GateError> {
        u64::try_from(self.int(name)?).map_err(|_| self.missing(name, "a count"))
    }

    /// A stream position, or `None` for `""`.
    pub(super) fn position(&self, name: &str) -> Result<Option<Position>, GateError> {
        let id = self.text(name)?;
        if id.is_empty() {
            return Ok(None);
        }
        Position::parse(&id)
            .map(Some)
            .ok_or_else(|| self.missing(name, "a stream id"))
    }

    /// What the script said of its outcome, for an error.
    pub(super) fn unexpected(&self) -> GateError {
        let outcome = self.outcome().unwrap_or_default();
        GateError::protocol(format!("{}: unexpected outcome {outcome:?}", self.script))
    }
}

/// A hold as the gate keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateHold {
    pub state: HoldState,
    pub customer_id: String,
    pub quantity: i64,
    pub expires_at_ms: i64,
    pub extensions: i64,
    pub created_ms: i64,
}

fn hold_state(state: &str) -> Result<HoldState, GateError> {
    HoldState::parse(state)
        .ok_or_else(|| GateError::protocol(format!("unknown hold state {state:?}")))
}

impl GateHold {
    /// The hold a transition script replied with.
    pub(super) fn from_fields(fields: &Fields) -> Result<Self, GateError> {
        Ok(Self {
            state: hold_state(&fields.text("state")?)?,
            customer_id: fields.text("customer")?,
            quantity: fields.int("quantity")?,
            expires_at_ms: fields.int("expires_at_ms")?,
            extensions: fields.int("extensions")?,
            created_ms: fields.int("created_at_ms")?,
        })
    }

    /// The hold hash's fields `s c q e x t`, as read by HMGET in that order.
    pub(super) const HASH_FIELDS: [&'static str; 6] = ["s", "c", "q", "e", "x", "t"];

    /// `None` when the hash does not exist.
    pub(super) fn from_hash(values: &[Option<String>]) -> Result<Option<Self>, GateError> {
        if values.first().is_none_or(Option::is_none) {
            return Ok(None);
        }
        let [
            Some(state),
            Some(customer),
            Some(qty),
            Some(expires),
            Some(ext),
            Some(created),
        ] = values
        else {
            return Err(GateError::protocol("hold hash with missing fields"));
        };
        let int = |field: &str, value: &str| {
            value
                .parse()
                .map_err(|_| GateError::protocol(format!("hold field {field} is {value:?}")))
        };
        Ok(Some(Self {
            state: hold_state(state)?,
            customer_id: customer.clone(),
            quantity: int("q", qty)?,
            expires_at_ms: int("e", expires)?,
            extensions: int("x", ext)?,
            created_ms: int("t", created)?,
        }))
    }
}

/// Parses one stream entry written by the scripts.
/// The events of one stream entry: one, or a batch of admissions
/// (admit_batch.lua's `admits` entry, its fields suffixed 1..n), in order.
/// They share the entry's position; the ledger applies an entry whole.
pub(super) fn events(
    stream_id: &str,
    fields: &HashMap<String, Value>,
) -> Result<Vec<Event>, GateError> {
    let bad = |what: &str| GateError::protocol(format!("stream entry {stream_id}: bad {what}"));
    if fields.get("t").and_then(text).as_deref() != Some("admits") {
        return Ok(vec![event(stream_id, fields)?]);
    }
    let count = fields.get("n").and_then(int).ok_or_else(|| bad("n"))?;
    (1..=count)
        .map(|j| {
            let mut one: HashMap<String, Value> = ["i", "h", "c", "q", "e", "k", "f"]
                .iter()
                .filter_map(|name| {
                    let value = fields.get(&format!("{name}{j}"))?;
                    Some(((*name).to_owned(), value.clone()))
                })
                .collect();
            one.insert("t".to_owned(), Value::SimpleString("admit".to_owned()));
            if let Some(at) = fields.get("m") {
                one.insert("m".to_owned(), at.clone());
            }
            event(stream_id, &one)
        })
        .collect()
}

fn event(stream_id: &str, fields: &HashMap<String, Value>) -> Result<Event, GateError> {
    let bad = |what: &str| GateError::protocol(format!("stream entry {stream_id}: bad {what}"));
    let get = |name: &str| fields.get(name).and_then(text).ok_or_else(|| bad(name));
    let get_int = |name: &str| fields.get(name).and_then(int).ok_or_else(|| bad(name));
    let hold_id = || {
        get("h").and_then(|h| {
            Uuid::try_parse(&h)
                .map(HoldId::from_uuid)
                .map_err(|_| bad("hold id"))
        })
    };
    let kind = get("t")?;
    let change = match kind.as_str() {
        "admit" => Change::Admit {
            hold_id: hold_id()?,
            customer_id: get("c")?,
            quantity: get_int("q")?,
            expires_at_ms: get_int("e")?,
            idempotency_key: get("k")?,
            fingerprint: get("f")?,
        },
        "confirm" | "release" | "expire" => Change::Settle {
            hold_id: hold_id()?,
            to: match kind.as_str() {
                "confirm" => HoldState::Confirmed,
                "release" => HoldState::Released,
                _ => HoldState::Expired,
            },
            quantity: get_int("q")?,
        },
        "extend" => Change::Extend {
            hold_id: hold_id()?,
            expires_at_ms: get_int("e")?,
        },
        "adjust" => Change::Adjust {
            on_hand_delta: get_int("d")?,
            per_customer_limit: get_int("l")?,
            hold_ttl_ms: get_int("ttl")?,
            max_extensions: get_int("x")?,
            reason: get("r")?,
        },
        _ => return Err(bad("kind")),
    };
    Ok(Event {
        position: Position::parse(stream_id).ok_or_else(|| bad("id"))?,
        event_id: Uuid::try_parse(&get("i")?).map_err(|_| bad("event id"))?,
        occurred_at_ms: get_int("m")?,
        change,
    })
}
