//! The history of one run: every operation a client, the admin or the probe
//! lane performed, as an invocation and a completion (`ok`, `fail` or
//! `info`), with monotonic and wall-clock times; every fault the nemesis
//! injected; and the samples of the ledger and the gate taken meanwhile.
//!
//! `ok` is a definite success (2xx), `fail` a definite refusal that changed
//! nothing (4xx, or a connection that was refused before anything was sent),
//! `info` an unknown outcome (a timeout, a cut connection, a 5xx): the
//! operation may have taken effect, at any time after its invocation.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum F {
    Admit,
    Confirm,
    Release,
    Extend,
    GetHold,
    Adjust,
    PutSku,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Ok,
    Fail,
    Info,
}

/// One operation, invocation and completion together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// Who did it: `c3` (storefront client 3), `admin`, `p7.1` (probe
    /// window 7, client 1), `sweeper`. One process runs one op at a time.
    pub process: String,
    pub f: F,
    pub sku: String,
    /// The gatekeeper that was asked (`gk1`, `gk2`).
    pub node: String,
    /// Idempotency-Key of an admission or an adjustment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The hold a confirm, release, extend or read is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Adjustment delta, or the on_hand a PUT sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Monotonic nanoseconds since the run started.
    pub invoke_ns: u64,
    pub invoke_wall_ms: i64,
    pub kind: Kind,
    pub complete_ns: u64,
    pub complete_wall_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The problem `code` of an error answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The answer's JSON body on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    /// `Idempotent-Replayed: true` was on the answer.
    #[serde(default)]
    pub replayed: bool,
    /// Why the outcome is unknown, or how it failed without an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// A blank operation; tests and the recorder fill in what they need.
    pub fn new(id: u64, process: &str, f: F, sku: &str) -> Self {
        Self {
            id,
            process: process.to_owned(),
            f,
            sku: sku.to_owned(),
            node: String::new(),
            key: None,
            hold_id: None,
            customer: None,
            quantity: None,
            amount: None,
            invoke_ns: 0,
            invoke_wall_ms: 0,
            kind: Kind::Info,
            complete_ns: u64::MAX,
            complete_wall_ms: i64::MAX,
            status: None,
            code: None,
            answer: None,
            replayed: false,
            error: None,
        }
    }

    /// The hold an answer names (201 of an admission, 200 of a transition).
    pub fn answered_hold_id(&self) -> Option<&str> {
        self.answer.as_ref()?.get("hold_id")?.as_str()
    }

    pub fn answered_state(&self) -> Option<&str> {
        self.answer.as_ref()?.get("state")?.as_str()
    }

    pub fn answered_expires_at_ms(&self) -> Option<i64> {
        let text = self.answer.as_ref()?.get("expires_at")?.as_str()?;
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()?;
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
    }

    /// The hold this op is about: its input, or what its answer named.
    pub fn hold(&self) -> Option<&str> {
        self.hold_id.as_deref().or_else(|| self.answered_hold_id())
    }

    pub fn is_ok(&self) -> bool {
        self.kind == Kind::Ok
    }

    pub fn is_admitted(&self) -> bool {
        self.f == F::Admit && self.kind == Kind::Ok && self.status == Some(201)
    }

    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "#{} {} {:?} {} @{}..{}ms",
            self.id,
            self.process,
            self.f,
            self.sku,
            self.invoke_ns / 1_000_000,
            if self.complete_ns == u64::MAX {
                "?".to_owned()
            } else {
                (self.complete_ns / 1_000_000).to_string()
            }
        );
        for (name, value) in [
            ("key", self.key.clone()),
            ("hold", self.hold_id.clone()),
            ("customer", self.customer.clone()),
            ("qty", self.quantity.map(|q| q.to_string())),
            ("amount", self.amount.map(|a| a.to_string())),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(" {name}={value}"));
            }
        }
        text.push_str(&format!(" -> {:?}", self.kind));
        if let Some(status) = self.status {
            text.push_str(&format!(" {status}"));
        }
        if let Some(code) = &self.code {
            text.push_str(&format!(" {code}"));
        }
        if (self.f == F::Admit || self.hold_id.is_none())
            && let Some(hold) = self.answered_hold_id()
        {
            text.push_str(&format!(" hold={hold}"));
        }
        if let Some(state) = self.answered_state() {
            text.push_str(&format!(" state={state}"));
        }
        if self.replayed {
            text.push_str(" (replayed)");
        }
        if let Some(error) = &self.error {
            text.push_str(&format!(" [{error}]"));
        }
        text
    }
}

/// A fault the nemesis injected, from start to end (healed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub name: String,
    pub target: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Redis lost its data at `start_ns` (restarted empty).
    #[serde(default)]
    pub data_loss: bool,
    #[serde(default)]
    pub detail: String,
}

/// One SKU's figures as one store saw them at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub sku: String,
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
    #[serde(default)]
    pub per_customer_limit: i64,
}

/// Units one customer has out (held + confirmed) in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerUnits {
    pub sku: String,
    pub customer: String,
    pub held: i64,
    pub confirmed: i64,
}

/// The ledger, or a gatekeeper's view of the gate, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub time_ns: u64,
    /// `ledger` or the gatekeeper asked (`gk1`).
    pub source: String,
    pub skus: Vec<Figures>,
    /// Ledger only: units out per customer, from the holds table, in the
    /// same snapshot as `skus`.
    #[serde(default)]
    pub customers: Vec<CustomerUnits>,
}

/// A line of the history file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Invoke {
        op: u64,
        process: String,
        f: F,
        sku: String,
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<i64>,
        time_ns: u64,
        wall_ms: i64,
    },
    Complete {
        op: u64,
        process: String,
        outcome: Kind,
        time_ns: u64,
        wall_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<Value>,
        #[serde(default)]
        replayed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Fault(Fault),
    Sample(Sample),
}

/// What an operation is asked to do, before it runs.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub process: String,
    pub sku: String,
    pub node: String,
    pub key: Option<String>,
    pub hold_id: Option<String>,
    pub customer: Option<String>,
    pub quantity: Option<i64>,
    pub amount: Option<i64>,
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub kind: Kind,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub answer: Option<Value>,
    pub replayed: bool,
    pub error: Option<String>,
}

/// Collects the lines of one run from every task, in the order they happen.
pub struct Recorder {
    started: Instant,
    lines: Mutex<Vec<Line>>,
    next_op: std::sync::atomic::AtomicU64,
}

pub fn wall_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            lines: Mutex::new(Vec::new()),
            next_op: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Monotonic nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn push(&self, line: Line) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    /// Records an invocation; returns the op id to complete it with.
    pub fn invoke(&self, f: F, invocation: &Invocation) -> u64 {
        let op = self
            .next_op
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let invocation = invocation.clone();
        self.push(Line::Invoke {
            op,
            process: invocation.process,
            f,
            sku: invocation.sku,
            node: invocation.node,
            key: invocation.key,
            hold_id: invocation.hold_id,
            customer: invocation.customer,
            quantity: invocation.quantity,
            amount: invocation.amount,
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
        });
        op
    }

    pub fn complete(&self, op: u64, process: &str, completion: Completion) {
        self.push(Line::Complete {
            op,
            process: process.to_owned(),
            outcome: completion.kind,
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
            status: completion.status,
            code: completion.code,
            answer: completion.answer,
            replayed: completion.replayed,
            error: completion.error,
        });
    }

    pub fn fault(&self, fault: Fault) {
        self.push(Line::Fault(fault));
    }

    pub fn sample(&self, sample: Sample) {
        self.push(Line::Sample(sample));
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The history as the checker reads it.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// In invocation order.
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    pub samples: Vec<Sample>,
}

impl History {
    /// Pairs invocations with completions. An invocation never completed
    /// (the run ended first) is `info` with no completion time.
    pub fn from_lines(lines: &[Line]) -> Self {
        let mut history = History::default();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for line in lines {
            match line.clone() {
                Line::Invoke {
                    op,
                    process,
                    f,
                    sku,
                    node,
                    key,
                    hold_id,
                    customer,
                    quantity,
                    amount,
                    time_ns,
                    wall_ms,
                } => {
                    let mut entry = Op::new(op, &process, f, &sku);
                    entry.node = node;
                    entry.key = key;
                    entry.hold_id = hold_id;
                    entry.customer = customer;
                    entry.quantity = quantity;
                    entry.amount = amount;
                    entry.invoke_ns = time_ns;
                    entry.invoke_wall_ms = wall_ms;
                    entry.error = Some("never completed".to_owned());
                    index.insert(op, history.ops.len());
                    history.ops.push(entry);
                }
                Line::Complete {
                    op,
                    outcome,
                    time_ns,
                    wall_ms,
                    status,
                    code,
                    answer,
                    replayed,
                    error,
                    ..
                } => {
                    if let Some(entry) = index.get(&op).and_then(|&i| history.ops.get_mut(i)) {
                        entry.kind = outcome;
                        entry.complete_ns = time_ns;
                        entry.complete_wall_ms = wall_ms;
                        entry.status = status;
                        entry.code = code;
                        entry.answer = answer;
                        entry.replayed = replayed;
                        entry.error = error;
                    }
                }
                Line::Fault(fault) => history.faults.push(fault),
                Line::Sample(sample) => history.samples.push(sample),
            }
        }
        history
    }
}

pub fn write_lines(path: &Path, lines: &[Line]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

pub fn read_lines(path: &Path) -> std::io::Result<Vec<Line>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut lines = Vec::new();
    for line in file.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines.push(serde_json::from_str(&line).map_err(std::io::Error::other)?);
    }
    Ok(lines)
}
