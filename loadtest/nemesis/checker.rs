//! The checker: reads one run's history, the samples taken during it and
//! the state at rest, and reports every violation of dropgate's promises
//! with the operations involved.
//!
//! | check | what must hold |
//! |---|---|
//! | `oversell` | in every ledger and gate sample and at rest: `held + sold <= on_hand`, nothing negative |
//! | `ledger` | the ledger's counters are the sums of its holds, in every sample |
//! | `admitted` | every hold answered `201` is in the ledger at rest and settled; `lost` (or absent) only if Redis lost its data after the admission began |
//! | `confirmed` | every `200` confirm is `confirmed` at rest, and no later answer shows it otherwise |
//! | `released` | every `200` release is `released` at rest (or expired/lost after a Redis data loss) |
//! | `idempotency` | a key names one hold, in every answer and in the ledger, and that hold is the key's; no rejection is replayed |
//! | `conservation` | at rest, every gatekeeper's figures equal the ledger's; `dropgate audit` passes; nothing still held; no event dead-lettered |
//! | `adjustment` | an answered adjustment is in the ledger once; a refused one not at all; a retried one at most once |
//! | `limit` | per customer, held + confirmed units never exceed the SKU's limit in the ledger |
//! | `rejection` | every fresh `sold_out` / `limit_exceeded` on a main SKU is explained: at some moment of the request, the units that may have been out leave too few |
//! | `linearizable` | each probe window's history has an order that the sequential gate model accepts |
//! | `expiry` | `expires_at` is now + `hold_ttl_ms` by the one clock; nothing expires before the time it was promised |

use crate::history::{F, Figures, History, Kind, Op, Sample};
use crate::linear::{self, AdmitOutcome, Call, GateOp, HoldOutcome, HoldState, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How far a promised time may be off (one machine, one clock).
pub const CLOCK_TOLERANCE_MS: i64 = 100;
/// An op whose outcome is unknown may still take effect this long after it
/// was sent (a request held by a paused gatekeeper runs when it resumes).
pub const LATE_EFFECT_NS: u64 = 10_000_000_000;
/// Steps the linearizability search may take per window.
pub const SEARCH_BUDGET: usize = 2_000_000;

/// [`SEARCH_BUDGET`], or `NEMESIS_SEARCH_BUDGET` when set: a `--recheck`
/// with a larger budget decides windows a run left undecided.
fn search_budget() -> usize {
    std::env::var("NEMESIS_SEARCH_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEARCH_BUDGET)
}

/// How a SKU was set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkuSpec {
    pub sku: String,
    pub on_hand: i64,
    pub per_customer_limit: i64,
    pub hold_ttl_ms: i64,
    pub max_extensions: i64,
    /// A fresh SKU for one linearizability window.
    pub probe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerHold {
    pub hold_id: String,
    pub sku: String,
    pub customer_id: String,
    pub quantity: i64,
    pub state: String,
    pub idempotency_key: Option<String>,
    pub expires_at_ms: i64,
}

/// A ledger movement (all of them but admits and extends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    pub sku: String,
    pub kind: String,
    pub hold_id: Option<String>,
    pub quantity_delta: i64,
    pub reason: Option<String>,
    pub committed_wall_ms: i64,
}

/// The system at rest, after the faults stopped and everything settled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// Everything settled before the deadline.
    pub settled: bool,
    pub settle_note: String,
    pub wall_ms: i64,
    pub ledger: Vec<Figures>,
    pub holds: Vec<LedgerHold>,
    pub movements: Vec<Movement>,
    /// Each gatekeeper's `GET /v1/skus/{sku}` answers (`source` = node).
    pub gate: Vec<Sample>,
    /// Gatekeepers that could not answer at rest, with why.
    pub gate_errors: Vec<String>,
    pub audit_exit: Option<i32>,
    pub audit_output: String,
    /// Events the ledger set aside as unappliable, still open at rest.
    #[serde(default)]
    pub dead_letters: Vec<String>,
}

/// Everything the checker reads about one run.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// Wall-clock ms at monotonic time 0 of the history.
    pub started_wall_ms: i64,
    pub skus: Vec<SkuSpec>,
    pub history: History,
    pub fin: FinalState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub check: String,
    pub message: String,
    /// The operations involved, one line each.
    pub ops: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub stats: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl Report {
    fn violation(&mut self, check: &str, message: String, ops: &[&Op]) {
        self.violations.push(Violation {
            check: check.to_owned(),
            message,
            ops: ops.iter().map(|op| op.describe()).collect(),
        });
    }

    fn count(&mut self, stat: &str, by: u64) {
        *self.stats.entry(stat.to_owned()).or_default() += by;
    }

    /// Violations per check.
    pub fn by_check(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for violation in &self.violations {
            *counts.entry(violation.check.clone()).or_default() += 1;
        }
        counts
    }

    /// The report as text: counts, then each violation with its ops (the
    /// first `per_check` of each check).
    pub fn text(&self, per_check: usize) -> String {
        let mut out = String::new();
        out.push_str(&format!("violations: {}\n", self.violations.len()));
        for (check, count) in self.by_check() {
            out.push_str(&format!("  {check}: {count}\n"));
        }
        out.push_str("stats:\n");
        for (stat, value) in &self.stats {
            out.push_str(&format!("  {stat}: {value}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        let mut shown: HashMap<&str, usize> = HashMap::new();
        for violation in &self.violations {
            let seen = shown.entry(violation.check.as_str()).or_default();
            *seen += 1;
            if *seen > per_check {
                continue;
            }
            out.push_str(&format!("\n[{}] {}\n", violation.check, violation.message));
            for op in &violation.ops {
                out.push_str(&format!("    {op}\n"));
            }
        }
        out
    }
}

/// Indexes over one run, built once.
struct Context<'a> {
    run: &'a RunRecord,
    specs: HashMap<&'a str, &'a SkuSpec>,
    /// Admission attempts per (sku, key).
    admits: BTreeMap<(&'a str, &'a str), Vec<&'a Op>>,
    /// Every op about a hold (by input or by answer), in invocation order.
    by_hold: HashMap<&'a str, Vec<&'a Op>>,
    ledger_holds: HashMap<&'a str, &'a crate::checker::LedgerHold>,
    /// Monotonic times at which Redis lost its data.
    data_losses: Vec<u64>,
}

impl<'a> Context<'a> {
    fn new(run: &'a RunRecord) -> Self {
        let mut admits: BTreeMap<(&str, &str), Vec<&Op>> = BTreeMap::new();
        let mut by_hold: HashMap<&str, Vec<&Op>> = HashMap::new();
        for op in &run.history.ops {
            if op.f == F::Admit
                && let Some(key) = op.key.as_deref()
            {
                admits.entry((op.sku.as_str(), key)).or_default().push(op);
            }
            if let Some(hold) = op.hold() {
                by_hold.entry(hold).or_default().push(op);
            }
        }
        Self {
            run,
            specs: run.skus.iter().map(|s| (s.sku.as_str(), s)).collect(),
            admits,
            by_hold,
            ledger_holds: run
                .fin
                .holds
                .iter()
                .map(|h| (h.hold_id.as_str(), h))
                .collect(),
            data_losses: run
                .history
                .faults
                .iter()
                .filter(|f| f.data_loss)
                .map(|f| f.start_ns)
                .collect(),
        }
    }

    /// Redis lost its data at some moment after `t`.
    fn data_loss_after(&self, t: u64) -> bool {
        self.data_losses.iter().any(|&loss| loss > t)
    }

    fn data_loss_between(&self, from: u64, to: u64) -> bool {
        self.data_losses
            .iter()
            .any(|&loss| loss > from && loss < to)
    }

    /// When the first attempt of an admission key began.
    fn first_attempt(&self, sku: &str, key: &str) -> u64 {
        self.admits
            .get(&(sku, key))
            .and_then(|ops| ops.iter().map(|op| op.invoke_ns).min())
            .unwrap_or(0)
    }

    fn is_probe(&self, sku: &str) -> bool {
        self.specs.get(sku).is_some_and(|s| s.probe)
    }

    fn wall_to_ns(&self, wall_ms: i64) -> u64 {
        u64::try_from(wall_ms.saturating_sub(self.run.started_wall_ms))
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    }
}

pub fn check(run: &RunRecord) -> Report {
    let ctx = Context::new(run);
    let mut report = Report::default();
    stats(&ctx, &mut report);
    if !run.fin.settled {
        report.notes.push(format!(
            "the system did not settle: {}",
            run.fin.settle_note
        ));
    }
    check_samples(&ctx, &mut report);
    check_admitted(&ctx, &mut report);
    check_transitions(&ctx, &mut report);
    check_idempotency(&ctx, &mut report);
    check_conservation(&ctx, &mut report);
    check_adjustments(&ctx, &mut report);
    check_expiry(&ctx, &mut report);
    check_rejections(&ctx, &mut report);
    check_windows(&ctx, &mut report);
    report
}

fn stats(ctx: &Context, report: &mut Report) {
    let history = &ctx.run.history;
    report.count("ops", history.ops.len() as u64);
    for op in &history.ops {
        let kind = match op.kind {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        };
        report.count(&format!("ops_{kind}"), 1);
        if op.is_admitted() && !op.replayed {
            report.count("holds_admitted", 1);
        }
        if op.f == F::Admit && op.code_is("sold_out") {
            report.count("sold_out_answers", 1);
        }
        if op.f == F::Confirm && op.is_ok() {
            report.count("confirms_ok", 1);
        }
    }
    report.count("faults", history.faults.len() as u64);
    report.count("samples", history.samples.len() as u64);
    for hold in &ctx.run.fin.holds {
        report.count(&format!("ledger_holds_{}", hold.state), 1);
    }
}

/// Checks 1 (oversell), the ledger's own consistency and 6 (limit) on every
/// sample and on the final state.
fn check_samples(ctx: &Context, report: &mut Report) {
    let fin = &ctx.run.fin;
    let final_ledger = Sample {
        time_ns: u64::MAX,
        source: "ledger".to_owned(),
        skus: fin.ledger.clone(),
        customers: customer_units(&fin.holds),
    };
    for sample in ctx.run.history.samples.iter().chain([&final_ledger]) {
        let when = if sample.time_ns == u64::MAX {
            "at rest".to_owned()
        } else {
            format!("at {}ms", sample.time_ns / 1_000_000)
        };
        for f in &sample.skus {
            if f.held < 0 || f.sold < 0 || f.held + f.sold > f.on_hand {
                report.violation(
                    "oversell",
                    format!(
                        "{} {when}: {} has on_hand {} held {} sold {}",
                        sample.source, f.sku, f.on_hand, f.held, f.sold
                    ),
                    &[],
                );
            }
        }
        if sample.source != "ledger" {
            continue;
        }
        let mut sums: HashMap<&str, (i64, i64)> = HashMap::new();
        for units in &sample.customers {
            let sum = sums.entry(units.sku.as_str()).or_default();
            sum.0 += units.held;
            sum.1 += units.confirmed;
        }
        for f in &sample.skus {
            let (held, sold) = sums.get(f.sku.as_str()).copied().unwrap_or_default();
            if (held, sold) != (f.held, f.sold) {
                report.violation(
                    "ledger",
                    format!(
                        "ledger {when}: {} counters held {} sold {} but its holds sum to held {held} sold {sold}",
                        f.sku, f.held, f.sold
                    ),
                    &[],
                );
            }
            if f.per_customer_limit <= 0 {
                continue;
            }
            for units in sample.customers.iter().filter(|u| u.sku == f.sku) {
                if units.held + units.confirmed > f.per_customer_limit {
                    report.violation(
                        "limit",
                        format!(
                            "ledger {when}: customer {} has {} held + {} confirmed of {} (limit {})",
                            units.customer, units.held, units.confirmed, f.sku, f.per_customer_limit
                        ),
                        &[],
                    );
                }
            }
        }
    }
}

/// Units out per (sku, customer) from a list of holds.
pub fn customer_units(holds: &[LedgerHold]) -> Vec<crate::history::CustomerUnits> {
    let mut units: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for hold in holds {
        let entry = units
            .entry((hold.sku.as_str(), hold.customer_id.as_str()))
            .or_default();
        match hold.state.as_str() {
            "held" => entry.0 += hold.quantity,
            "confirmed" => entry.1 += hold.quantity,
            _ => {}
        }
    }
    units
        .into_iter()
        .map(
            |((sku, customer), (held, confirmed))| crate::history::CustomerUnits {
                sku: sku.to_owned(),
                customer: customer.to_owned(),
                held,
                confirmed,
            },
        )
        .collect()
}

/// Check 2: every 201 is real.
fn check_admitted(ctx: &Context, report: &mut Report) {
    let mut answered: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ctx.run.history.ops.iter().filter(|op| op.is_admitted()) {
        if let Some(hold) = op.answered_hold_id() {
            answered.entry(hold).or_default().push(op);
        }
    }
    for (hold_id, ops) in answered {
        let first = ops[0];
        let began = ctx.first_attempt(&first.sku, first.key.as_deref().unwrap_or_default());
        let loss_excuses = ctx.data_loss_after(began);
        match ctx.ledger_holds.get(hold_id) {
            None if loss_excuses => report.count("holds_lost_with_redis", 1),
            None => report.violation(
                "admitted",
                format!("hold {hold_id} was answered 201 but is not in the ledger, and Redis lost no data after it"),
                &ops,
            ),
            Some(hold) => match hold.state.as_str() {
                "confirmed" | "released" | "expired" => {}
                "lost" if loss_excuses => report.count("holds_lost_with_redis", 1),
                "lost" => report.violation(
                    "admitted",
                    format!("hold {hold_id} was answered 201 and ended lost, but Redis lost no data after it"),
                    &ops,
                ),
                state => report.violation(
                    "admitted",
                    format!("hold {hold_id} is still {state} at rest"),
                    &ops,
                ),
            },
        }
    }
}

/// Check 3: every 200 confirm is durable and stays confirmed; a 200 release
/// stays released.
fn check_transitions(ctx: &Context, report: &mut Report) {
    for (hold_id, ops) in &ctx.by_hold {
        let final_state = ctx.ledger_holds.get(hold_id).map(|h| h.state.as_str());
        for done in ops.iter().filter(|op| op.is_ok()) {
            let wanted = match done.f {
                F::Confirm => "confirmed",
                F::Release => "released",
                _ => continue,
            };
            let excused = wanted == "released" && ctx.data_loss_after(done.invoke_ns);
            if final_state != Some(wanted) && !excused {
                report.violation(
                    if wanted == "confirmed" { "confirmed" } else { "released" },
                    format!(
                        "hold {hold_id} was answered {wanted} (200) but is {} in the ledger at rest",
                        final_state.unwrap_or("absent")
                    ),
                    &[done],
                );
            }
            // Every later answer must show the same state.
            for later in ops.iter().filter(|op| op.invoke_ns > done.complete_ns) {
                if wanted == "released" && ctx.data_loss_after(done.invoke_ns) {
                    break;
                }
                let seen = observed_state(later);
                if let Some(seen) = seen.filter(|seen| *seen != wanted) {
                    report.violation(
                        if wanted == "confirmed" {
                            "confirmed"
                        } else {
                            "released"
                        },
                        format!("hold {hold_id} was answered {wanted} (200), then seen {seen}"),
                        &[done, later],
                    );
                }
            }
        }
    }
}

/// The state an answer shows the hold in, if it shows one.
fn observed_state(op: &Op) -> Option<&str> {
    match op.kind {
        Kind::Ok if op.f != F::Admit => op.answered_state(),
        Kind::Fail => op
            .code
            .as_deref()
            .and_then(|code| code.strip_prefix("hold_")),
        _ => None,
    }
}

/// Check 4: idempotency.
fn check_idempotency(ctx: &Context, report: &mut Report) {
    for ((sku, key), attempts) in &ctx.admits {
        // Rejections store nothing (API.md), so none is ever replayed.
        for op in attempts
            .iter()
            .filter(|op| op.replayed && (op.code_is("sold_out") || op.code_is("limit_exceeded")))
        {
            report.violation(
                "idempotency",
                format!("key {key} of {sku} replayed a rejection, which is never stored"),
                &[op],
            );
        }
        let named: BTreeSet<&str> = attempts
            .iter()
            .filter(|op| op.is_admitted())
            .filter_map(|op| op.answered_hold_id())
            .collect();
        if named.len() > 1 {
            report.violation(
                "idempotency",
                format!(
                    "key {key} of {sku} named {} different holds: {}",
                    named.len(),
                    named.iter().copied().collect::<Vec<_>>().join(", ")
                ),
                attempts,
            );
        }
        for op in attempts.iter().filter(|op| op.is_admitted()) {
            let Some(hold) = op
                .answered_hold_id()
                .and_then(|id| ctx.ledger_holds.get(id))
            else {
                continue;
            };
            let same = hold.sku == *sku
                && hold.idempotency_key.as_deref() == Some(*key)
                && Some(hold.customer_id.as_str()) == op.customer.as_deref()
                && Some(hold.quantity) == op.quantity;
            if !same {
                report.violation(
                    "idempotency",
                    format!(
                        "key {key} of {sku} was answered hold {}, which the ledger has for key {:?}, customer {}, quantity {} on {}",
                        hold.hold_id, hold.idempotency_key, hold.customer_id, hold.quantity, hold.sku
                    ),
                    &[op],
                );
            }
        }
    }
    let mut per_key: BTreeMap<(&str, &str), Vec<&LedgerHold>> = BTreeMap::new();
    for hold in &ctx.run.fin.holds {
        if let Some(key) = hold.idempotency_key.as_deref() {
            per_key
                .entry((hold.sku.as_str(), key))
                .or_default()
                .push(hold);
        }
    }
    for ((sku, key), holds) in per_key {
        if holds.len() > 1 {
            let attempts = ctx.admits.get(&(sku, key)).cloned().unwrap_or_default();
            report.violation(
                "idempotency",
                format!(
                    "the ledger has {} holds for key {key} of {sku}: {}",
                    holds.len(),
                    holds
                        .iter()
                        .map(|h| format!("{} ({})", h.hold_id, h.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &attempts,
            );
        }
    }
}

/// Check 5: conservation at rest.
fn check_conservation(ctx: &Context, report: &mut Report) {
    let fin = &ctx.run.fin;
    for error in &fin.gate_errors {
        report.violation(
            "conservation",
            format!("a gatekeeper could not report at rest: {error}"),
            &[],
        );
    }
    for gate in &fin.gate {
        for ledger in &fin.ledger {
            let Some(seen) = gate.skus.iter().find(|f| f.sku == ledger.sku) else {
                report.violation(
                    "conservation",
                    format!("{} does not know {} at rest", gate.source, ledger.sku),
                    &[],
                );
                continue;
            };
            if (seen.on_hand, seen.held, seen.sold) != (ledger.on_hand, ledger.held, ledger.sold) {
                report.violation(
                    "conservation",
                    format!(
                        "{} at rest: {} gate on_hand {} held {} sold {}, ledger on_hand {} held {} sold {}",
                        gate.source, ledger.sku, seen.on_hand, seen.held, seen.sold,
                        ledger.on_hand, ledger.held, ledger.sold
                    ),
                    &[],
                );
            }
        }
    }
    for hold in fin.holds.iter().filter(|h| h.state == "held") {
        if hold.expires_at_ms + 2_000 < fin.wall_ms {
            let ops = ctx
                .by_hold
                .get(hold.hold_id.as_str())
                .cloned()
                .unwrap_or_default();
            report.violation(
                "conservation",
                format!(
                    "hold {} of {} is still held at rest, {} ms after it expired",
                    hold.hold_id,
                    hold.sku,
                    fin.wall_ms - hold.expires_at_ms
                ),
                &ops,
            );
        }
    }
    for dead in &fin.dead_letters {
        report.violation(
            "conservation",
            format!("an event is dead-lettered at rest: {dead}"),
            &[],
        );
    }
    match fin.audit_exit {
        Some(0) => {}
        exit => report.violation(
            "conservation",
            format!(
                "dropgate audit exited {exit:?}: {}",
                fin.audit_output.trim()
            ),
            &[],
        ),
    }
}

/// Adjustments by Idempotency-Key: applied once when answered, never when
/// refused, at most once when retried. The ledger movement's reason carries
/// the key.
fn check_adjustments(ctx: &Context, report: &mut Report) {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ctx.run.history.ops.iter().filter(|op| op.f == F::Adjust) {
        if let Some(key) = op.key.as_deref() {
            by_key.entry(key).or_default().push(op);
        }
    }
    for (key, attempts) in by_key {
        let movements: Vec<&Movement> = ctx
            .run
            .fin
            .movements
            .iter()
            .filter(|m| m.kind == "adjustment" && names_request(m, key))
            .collect();
        let applied: Vec<&&Movement> = movements.iter().filter(|m| m.quantity_delta != 0).collect();
        let answered = attempts.iter().any(|op| op.is_ok());
        let refused = attempts.iter().all(|op| op.kind == Kind::Fail);
        let delta = attempts[0].amount.unwrap_or(0);
        if applied.len() > 1 {
            report.violation(
                "adjustment",
                format!(
                    "adjustment {key} ({delta:+}) was applied {} times ({} attempts)",
                    applied.len(),
                    attempts.len()
                ),
                &attempts,
            );
        }
        if answered && applied.is_empty() {
            report.violation(
                "adjustment",
                format!(
                    "adjustment {key} ({delta:+}) was answered 201 but the ledger has no such change{}",
                    movements
                        .first()
                        .and_then(|m| m.reason.as_deref())
                        .map(|r| format!(" (it recorded: {r})"))
                        .unwrap_or_default()
                ),
                &attempts,
            );
        }
        if refused && !applied.is_empty() {
            report.violation(
                "adjustment",
                format!("adjustment {key} ({delta:+}) was refused but applied"),
                &attempts,
            );
        }
        if applied.iter().any(|m| m.quantity_delta != delta) {
            report.violation(
                "adjustment",
                format!("adjustment {key} asked {delta:+} but the ledger moved otherwise"),
                &attempts,
            );
        }
    }
}

/// The workload writes `nemesis <key>` as an adjustment's reason; a
/// movement the ledger refused carries it after a colon.
fn names_request(movement: &Movement, key: &str) -> bool {
    let request = format!("nemesis {key}");
    movement
        .reason
        .as_deref()
        .is_some_and(|r| r == request || r.ends_with(&format!(": {request}")))
}

/// Check 8: `expires_at` comes from the one clock, and nothing expires
/// before the time it was promised.
fn check_expiry(ctx: &Context, report: &mut Report) {
    for op in &ctx.run.history.ops {
        let fresh = (op.is_admitted() && !op.replayed) || (op.f == F::Extend && op.is_ok());
        if !fresh {
            continue;
        }
        let (Some(spec), Some(expires)) =
            (ctx.specs.get(op.sku.as_str()), op.answered_expires_at_ms())
        else {
            continue;
        };
        let earliest = op.invoke_wall_ms + spec.hold_ttl_ms - CLOCK_TOLERANCE_MS;
        let latest = op
            .complete_wall_ms
            .saturating_add(spec.hold_ttl_ms + CLOCK_TOLERANCE_MS);
        if expires < earliest || expires > latest {
            let off = if expires < earliest {
                expires - (op.invoke_wall_ms + spec.hold_ttl_ms)
            } else {
                expires - (op.complete_wall_ms + spec.hold_ttl_ms)
            };
            report.violation(
                "expiry",
                format!(
                    "{:?} on {} answered expires_at {off:+} ms off now + hold_ttl_ms ({} ms), by the clock of {}",
                    op.f, op.sku, spec.hold_ttl_ms, op.node
                ),
                &[op],
            );
        }
    }
    for (hold_id, ops) in &ctx.by_hold {
        for expired in ops
            .iter()
            .filter(|op| observed_state(op) == Some("expired"))
        {
            // The latest expiry promised by an answer that came before.
            let promise = ops
                .iter()
                .filter(|p| p.is_ok() && p.complete_ns < expired.invoke_ns)
                .filter(|p| p.f == F::Admit || p.answered_state() == Some("held"))
                .filter_map(|p| p.answered_expires_at_ms().map(|at| (at, *p)))
                .max_by_key(|(at, _)| *at);
            let Some((promised, by)) = promise else {
                continue;
            };
            if ctx.data_loss_between(by.invoke_ns, expired.complete_ns) {
                continue;
            }
            if expired.complete_wall_ms < promised - CLOCK_TOLERANCE_MS {
                report.violation(
                    "expiry",
                    format!(
                        "hold {hold_id} was seen expired {} ms before the expires_at it was promised",
                        promised - expired.complete_wall_ms
                    ),
                    &[by, expired],
                );
            }
        }
    }
}

/// Adjustments and PUTs of a SKU as effects on `on_hand` over time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    Add(i64),
    Set(i64),
    Unknown,
}

/// Intervals in which `on_hand` of a main SKU is known, with its value. It
/// starts as set up (the setup PUT is in the history too).
fn on_hand_timeline(ctx: &Context, spec: &SkuSpec) -> Vec<(u64, u64, i64)> {
    let sku = spec.sku.as_str();
    let mut effects: Vec<(u64, u64, Effect)> = Vec::new();
    let admin: Vec<&Op> = ctx
        .run
        .history
        .ops
        .iter()
        .filter(|op| op.sku == sku && matches!(op.f, F::Adjust | F::PutSku))
        .collect();
    let end_of = |op: &Op| match op.kind {
        Kind::Info => op.invoke_ns.saturating_add(LATE_EFFECT_NS),
        _ => op.complete_ns,
    };
    let mut adjust_keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &admin {
        match (op.f, op.kind) {
            (F::PutSku, Kind::Ok) => effects.push((
                op.invoke_ns,
                op.complete_ns,
                Effect::Set(op.amount.unwrap_or(0)),
            )),
            (F::PutSku, Kind::Info) => effects.push((op.invoke_ns, end_of(op), Effect::Unknown)),
            (F::Adjust, _) => adjust_keys
                .entry(op.key.as_deref().unwrap_or_default())
                .or_default()
                .push(op),
            _ => {}
        }
    }
    for (key, attempts) in adjust_keys {
        let start = attempts.iter().map(|op| op.invoke_ns).min().unwrap_or(0);
        let end = attempts.iter().map(|op| end_of(op)).max().unwrap_or(0);
        let applied = ctx
            .run
            .fin
            .movements
            .iter()
            .filter(|m| m.kind == "adjustment" && m.quantity_delta != 0 && names_request(m, key))
            .count();
        let delta = attempts[0].amount.unwrap_or(0);
        let effect = match applied {
            1 => Effect::Add(delta),
            0 if !ctx.data_loss_after(start) => continue,
            _ => Effect::Unknown,
        };
        effects.push((start, end, effect));
    }
    effects.sort_by_key(|e| e.0);
    // Overlapping effects form clusters; between clusters the value is known
    // when it was known before and the cluster's result is determined.
    let mut known: Vec<(u64, u64, i64)> = Vec::new();
    let mut value: Option<i64> = Some(spec.on_hand);
    let mut since = 0u64;
    let mut i = 0;
    while i < effects.len() {
        let start = effects[i].0;
        let mut end = effects[i].1;
        let mut cluster = vec![effects[i].2];
        i += 1;
        while i < effects.len() && effects[i].0 <= end {
            end = end.max(effects[i].1);
            cluster.push(effects[i].2);
            i += 1;
        }
        if let Some(v) = value {
            known.push((since, start, v));
        }
        value = match (cluster.as_slice(), value) {
            ([Effect::Set(x)], _) => Some(*x),
            (effects, Some(v)) if effects.iter().all(|e| matches!(e, Effect::Add(_))) => Some(
                v + effects
                    .iter()
                    .map(|e| if let Effect::Add(d) = e { *d } else { 0 })
                    .sum::<i64>(),
            ),
            _ => None,
        };
        since = end;
    }
    if let Some(v) = value {
        known.push((since, u64::MAX, v));
    }
    known
}

/// Check 7, main SKUs: every fresh `sold_out` and `limit_exceeded` is
/// explained by the units that may have been out during the request.
fn check_rejections(ctx: &Context, report: &mut Report) {
    // Per SKU: (from, until, units, customer) of every admission that may
    // have taken units.
    let mut out: HashMap<&str, Vec<(u64, u64, i64, &str)>> = HashMap::new();
    let ledger_keys: BTreeSet<(&str, &str)> = ctx
        .run
        .fin
        .holds
        .iter()
        .filter_map(|h| Some((h.sku.as_str(), h.idempotency_key.as_deref()?)))
        .collect();
    let returned_at: HashMap<&str, u64> = ctx
        .run
        .fin
        .movements
        .iter()
        // Only the gate's own events bound when the gate returned the units:
        // a movement with a reason was settled in the ledger alone
        // (Postgres-direct expiry, an orphan settled by the reconciler).
        .filter(|m| matches!(m.kind.as_str(), "release" | "expire") && m.reason.is_none())
        .filter_map(|m| {
            Some((
                m.hold_id.as_deref()?,
                ctx.wall_to_ns(m.committed_wall_ms + 5),
            ))
        })
        .collect();
    for ((sku, key), attempts) in &ctx.admits {
        if ctx.is_probe(sku) {
            continue;
        }
        let took = attempts
            .iter()
            .filter(|op| op.is_admitted() || op.kind == Kind::Info);
        let Some(from) = took.map(|op| op.invoke_ns).min() else {
            continue;
        };
        let hold = attempts.iter().find_map(|op| op.answered_hold_id());
        if hold.is_none() && !ctx.data_loss_after(from) && !ledger_keys.contains(&(*sku, *key)) {
            // Never answered, never in the ledger: it took nothing.
            continue;
        }
        let mut until = u64::MAX;
        if let Some(hold) = hold {
            if let Some(&at) = returned_at.get(hold) {
                until = until.min(at);
            }
            for op in ctx.by_hold.get(hold).into_iter().flatten() {
                if matches!(observed_state(op), Some("released" | "expired")) {
                    until = until.min(op.complete_ns);
                }
            }
        }
        let quantity = attempts[0].quantity.unwrap_or(1);
        let customer = attempts[0].customer.as_deref().unwrap_or_default();
        out.entry(sku)
            .or_default()
            .push((from, until, quantity, customer));
    }
    let most_out = |holds: &[(u64, u64, i64, &str)], customer: Option<&str>, from: u64, to: u64| {
        let relevant: Vec<&(u64, u64, i64, &str)> = holds
            .iter()
            .filter(|h| customer.is_none_or(|c| h.3 == c))
            .collect();
        // The sum is a step function rising only at a hold's start: its
        // maximum over [from, to] is at `from` or at a start inside.
        let at = |t: u64| -> i64 {
            relevant
                .iter()
                .filter(|h| h.0 <= t && t < h.1)
                .map(|h| h.2)
                .sum()
        };
        std::iter::once(from)
            .chain(
                relevant
                    .iter()
                    .map(|h| h.0)
                    .filter(|&s| s > from && s <= to),
            )
            .map(at)
            .max()
            .unwrap_or(0)
    };
    let empty = Vec::new();
    for spec in ctx.run.skus.iter().filter(|s| !s.probe) {
        let timeline = on_hand_timeline(ctx, spec);
        let holds = out.get(spec.sku.as_str()).unwrap_or(&empty);
        for op in ctx.run.history.ops.iter().filter(|op| {
            op.sku == spec.sku && op.f == F::Admit && op.kind == Kind::Fail && !op.replayed
        }) {
            let quantity = op.quantity.unwrap_or(1);
            if op.code_is("sold_out") {
                let Some(&(_, _, on_hand)) = timeline
                    .iter()
                    .find(|(from, to, _)| *from <= op.invoke_ns && op.complete_ns <= *to)
                else {
                    report.count("sold_out_unchecked", 1);
                    continue;
                };
                report.count("sold_out_checked", 1);
                let most = most_out(holds, None, op.invoke_ns, op.complete_ns);
                if most + quantity <= on_hand {
                    report.violation(
                        "rejection",
                        format!(
                            "sold_out for {quantity} of {} while at most {most} of {on_hand} units can have been out",
                            spec.sku
                        ),
                        &[op],
                    );
                }
            } else if op.code_is("limit_exceeded") && spec.per_customer_limit > 0 {
                let most = most_out(holds, op.customer.as_deref(), op.invoke_ns, op.complete_ns);
                if most + quantity <= spec.per_customer_limit {
                    report.violation(
                        "rejection",
                        format!(
                            "limit_exceeded for {quantity} of {} while customer {} had at most {most} (limit {})",
                            spec.sku,
                            op.customer.as_deref().unwrap_or_default(),
                            spec.per_customer_limit
                        ),
                        &[op],
                    );
                }
            }
        }
    }
}

/// Check 7, probe SKUs: each window is linearizable against the gate model.
fn check_windows(ctx: &Context, report: &mut Report) {
    for spec in ctx.run.skus.iter().filter(|s| s.probe) {
        let ops: Vec<&Op> = ctx
            .run
            .history
            .ops
            .iter()
            .filter(|op| op.sku == spec.sku && op.f != F::PutSku)
            .collect();
        if ops.is_empty() {
            continue;
        }
        let begin = ops.iter().map(|op| op.invoke_ns).min().unwrap_or(0);
        let end = ops
            .iter()
            .map(|op| {
                if op.kind == Kind::Info {
                    op.invoke_ns.saturating_add(LATE_EFFECT_NS)
                } else {
                    op.complete_ns
                }
            })
            .max()
            .unwrap_or(u64::MAX);
        if ctx.data_loss_between(begin.saturating_sub(1), end) {
            report.count("windows_skipped_data_loss", 1);
            continue;
        }
        let (calls, placed, model) = window_calls(spec, &ops);
        match linear::check(&model, &calls, search_budget()) {
            Verdict::Linearizable => report.count("windows_linearizable", 1),
            Verdict::Undecided => {
                report.count("windows_undecided", 1);
                report
                    .notes
                    .push(format!("window {} too large to decide", spec.sku));
            }
            Verdict::Illegal { longest, stuck } => {
                let stuck = ops[placed[stuck]];
                let mut involved: Vec<&Op> = vec![stuck];
                involved.extend(ops.iter().filter(|op| op.id != stuck.id));
                report.violation(
                    "linearizable",
                    format!(
                        "window {} (on_hand {}, limit {}): no order of its {} ops fits the gate; at best {} fit, then {} cannot be placed (listed first)",
                        spec.sku,
                        spec.on_hand,
                        spec.per_customer_limit,
                        ops.len(),
                        longest.len(),
                        stuck.describe()
                    ),
                    &involved,
                );
            }
        }
    }
}

/// A window's ops as model calls, the index in `ops` of each call, and the
/// model's initial state.
fn window_calls(spec: &SkuSpec, ops: &[&Op]) -> (Vec<Call<GateOp>>, Vec<usize>, linear::Gate) {
    let mut keys: HashMap<&str, usize> = HashMap::new();
    let mut customers: HashMap<&str, usize> = HashMap::new();
    let mut hold_keys: HashMap<&str, usize> = HashMap::new();
    for op in ops.iter().filter(|op| op.f == F::Admit) {
        let next = keys.len();
        let key = *keys
            .entry(op.key.as_deref().unwrap_or_default())
            .or_insert(next);
        let next = customers.len();
        customers
            .entry(op.customer.as_deref().unwrap_or_default())
            .or_insert(next);
        if let (true, Some(hold)) = (op.is_admitted(), op.answered_hold_id()) {
            hold_keys.entry(hold).or_insert(key);
        }
    }
    let mut calls = Vec::new();
    let mut placed = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let complete = (op.kind != Kind::Info).then_some(op.complete_ns);
        let call_op = if op.f == F::Admit {
            let outcome = match (op.kind, op.status, op.code.as_deref()) {
                (Kind::Ok, Some(201), _) => AdmitOutcome::Held,
                (Kind::Fail, _, Some("sold_out")) => AdmitOutcome::SoldOut {
                    replayed: op.replayed,
                },
                (Kind::Fail, _, Some("limit_exceeded")) => AdmitOutcome::LimitExceeded {
                    replayed: op.replayed,
                },
                (Kind::Fail, _, _) => AdmitOutcome::Refused,
                _ => AdmitOutcome::Unknown,
            };
            GateOp::Admit {
                key: keys[op.key.as_deref().unwrap_or_default()],
                customer: customers[op.customer.as_deref().unwrap_or_default()],
                quantity: op.quantity.unwrap_or(1),
                outcome,
            }
        } else {
            // The sweeper names the key; clients name the hold they got.
            let key = op
                .key
                .as_deref()
                .and_then(|k| keys.get(k))
                .or_else(|| op.hold_id.as_deref().and_then(|h| hold_keys.get(h)));
            let Some(&key) = key else {
                continue;
            };
            let outcome = match (op.kind, op.status, op.code.as_deref()) {
                (Kind::Ok, _, _) => op
                    .answered_state()
                    .and_then(HoldState::parse)
                    .map_or(HoldOutcome::Unknown, HoldOutcome::Ok),
                (Kind::Fail, Some(404), _) => HoldOutcome::NotFound,
                (Kind::Fail, _, Some("extension_limit")) => HoldOutcome::ExtensionLimit,
                (Kind::Fail, _, Some(code)) => {
                    HoldState::from_code(code).map_or(HoldOutcome::Refused, HoldOutcome::Conflict)
                }
                (Kind::Fail, _, None) => HoldOutcome::Refused,
                (Kind::Info, _, _) => HoldOutcome::Unknown,
            };
            match op.f {
                F::Confirm => GateOp::Confirm { key, outcome },
                F::Release => GateOp::Release { key, outcome },
                F::Extend => GateOp::Extend { key, outcome },
                F::GetHold => GateOp::Read { key, outcome },
                _ => continue,
            }
        };
        calls.push(Call {
            op: call_op,
            invoke: op.invoke_ns,
            complete,
        });
        placed.push(index);
    }
    let model = linear::Gate::new(
        spec.on_hand,
        spec.per_customer_limit,
        spec.max_extensions,
        keys.len(),
        customers.len(),
    );
    (calls, placed, model)
}
