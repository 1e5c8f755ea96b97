//! Turning script replies and Redis hashes into typed values.

use super::GateError;
use crate::domain::{Change, Event, HoldId, HoldState, Position};
use redis::Value;
use std::collections::HashMap;
use uuid::Uuid;

pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// Positional access to a script's reply array.
pub struct Reply(pub Vec<Value>);

impl Reply {
    pub fn outcome(&self) -> Result<String, GateError> {
        self.text(0)
    }

    pub fn text(&self, index: usize) -> Result<String, GateError> {
        self.0
            .get(index)
            .and_then(text)
            .ok_or_else(|| GateError::protocol(format!("reply element {index} is not text")))
    }

    pub fn int(&self, index: usize) -> Result<i64, GateError> {
        self.0
            .get(index)
            .and_then(int)
            .ok_or_else(|| GateError::protocol(format!("reply element {index} is not an integer")))
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

/// Reads `{state, customer, qty, expires, extensions, created}` from `from`.
pub fn gate_hold(reply: &Reply, from: usize) -> Result<GateHold, GateError> {
    let state = reply.text(from)?;
    Ok(GateHold {
        state: HoldState::parse(&state)
            .ok_or_else(|| GateError::protocol(format!("unknown hold state {state:?}")))?,
        customer_id: reply.text(from + 1)?,
        quantity: reply.int(from + 2)?,
        expires_at_ms: reply.int(from + 3)?,
        extensions: reply.int(from + 4)?,
        created_ms: reply.int(from + 5)?,
    })
}

/// Parses one stream entry written by the scripts.
pub fn event(stream_id: &str, fields: &HashMap<String, Value>) -> Result<Event, GateError> {
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
