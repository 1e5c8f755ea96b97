//! The nemesis checker's own tests: hand-written histories with a planted
//! violation that it must reject (naming the right check), and legal ones,
//! concurrency and unknown outcomes included, that it must accept. Without
//! these a green nemesis run proves nothing.

#[allow(dead_code)]
mod checker;
#[allow(dead_code)]
mod history;
#[allow(dead_code)]
mod linear;
mod linear_tests;

use checker::{FinalState, LedgerHold, Movement, RunRecord, SkuSpec};
use history::{CustomerUnits, F, Fault, Figures, History, Kind, Op, Sample};
use serde_json::json;

const BASE_WALL_MS: i64 = 1_800_000_000_000;
const TTL_MS: i64 = 2_000;
const MS: u64 = 1_000_000;

fn spec(sku: &str, on_hand: i64, limit: i64, probe: bool) -> SkuSpec {
    SkuSpec {
        sku: sku.to_owned(),
        on_hand,
        per_customer_limit: limit,
        hold_ttl_ms: if probe { 60_000 } else { TTL_MS },
        max_extensions: 1,
        probe,
    }
}

fn rfc3339(wall_ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(wall_ms) * 1_000_000)
        .expect("a time");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Builds a history op by op; times are in ms from the start.
struct Builder {
    ops: Vec<Op>,
    specs: Vec<SkuSpec>,
}

impl Builder {
    fn new(specs: Vec<SkuSpec>) -> Self {
        Self {
            ops: Vec::new(),
            specs,
        }
    }

    fn ttl(&self, sku: &str) -> i64 {
        self.specs
            .iter()
            .find(|s| s.sku == sku)
            .map_or(TTL_MS, |s| s.hold_ttl_ms)
    }

    fn push(
        &mut self,
        f: F,
        process: &str,
        sku: &str,
        from_ms: u64,
        to_ms: Option<u64>,
    ) -> &mut Op {
        let id = self.ops.len() as u64 + 1;
        let mut op = Op::new(id, process, f, sku);
        op.node = "gk1".to_owned();
        op.invoke_ns = from_ms * MS;
        op.invoke_wall_ms = BASE_WALL_MS + from_ms as i64;
        if let Some(to) = to_ms {
            op.complete_ns = to * MS;
            op.complete_wall_ms = BASE_WALL_MS + to as i64;
        }
        self.ops.push(op);
        self.ops.last_mut().expect("just pushed")
    }

    /// An admission answered 201 with `hold`.
    #[allow(clippy::too_many_arguments)]
    fn held(
        &mut self,
        process: &str,
        sku: &str,
        key: &str,
        customer: &str,
        hold: &str,
        from: u64,
        to: u64,
    ) {
        let expires = BASE_WALL_MS + from as i64 + self.ttl(sku);
        let op = self.push(F::Admit, process, sku, from, Some(to));
        op.key = Some(key.to_owned());
        op.customer = Some(customer.to_owned());
        op.quantity = Some(1);
        op.kind = Kind::Ok;
        op.status = Some(201);
        op.answer = Some(json!({"hold_id": hold, "state": "held", "expires_at": rfc3339(expires)}));
    }

    /// An admission refused (`code`) or unknown (`None`, never completed).
    #[allow(clippy::too_many_arguments)]
    fn admit_other(
        &mut self,
        process: &str,
        sku: &str,
        key: &str,
        customer: &str,
        from: u64,
        to: Option<u64>,
        code: Option<&str>,
    ) {
        let op = self.push(F::Admit, process, sku, from, to);
        op.key = Some(key.to_owned());
        op.customer = Some(customer.to_owned());
        op.quantity = Some(1);
        match code {
            Some(code) => {
                op.kind = Kind::Fail;
                op.status = Some(409);
                op.code = Some(code.to_owned());
            }
            None => op.kind = Kind::Info,
        }
    }

    /// A confirm, release, extend or read answered 200 with `state`, or
    /// 409 `hold_<state>` when `conflict`.
    #[allow(clippy::too_many_arguments)]
    fn on_hold(
        &mut self,
        f: F,
        process: &str,
        sku: &str,
        hold: &str,
        from: u64,
        to: u64,
        state: &str,
        conflict: bool,
    ) {
        let op = self.push(f, process, sku, from, Some(to));
        op.hold_id = Some(hold.to_owned());
        if conflict {
            op.kind = Kind::Fail;
            op.status = Some(409);
            op.code = Some(format!("hold_{state}"));
        } else {
            op.kind = Kind::Ok;
            op.status = Some(200);
            op.answer = Some(json!({"hold_id": hold, "state": state}));
        }
    }

    fn adjust(&mut self, sku: &str, key: &str, delta: i64, from: u64, to: u64, kind: Kind) {
        let op = self.push(F::Adjust, "admin", sku, from, Some(to));
        op.key = Some(key.to_owned());
        op.amount = Some(delta);
        op.kind = kind;
        op.status = match kind {
            Kind::Ok => Some(201),
            Kind::Fail => Some(409),
            Kind::Info => Some(503),
        };
    }
}

fn hold(id: &str, sku: &str, customer: &str, key: &str, state: &str) -> LedgerHold {
    LedgerHold {
        hold_id: id.to_owned(),
        sku: sku.to_owned(),
        customer_id: customer.to_owned(),
        quantity: 1,
        state: state.to_owned(),
        idempotency_key: Some(key.to_owned()),
        expires_at_ms: BASE_WALL_MS,
    }
}

fn figures(sku: &str, on_hand: i64, held: i64, sold: i64, limit: i64) -> Figures {
    Figures {
        sku: sku.to_owned(),
        on_hand,
        held,
        sold,
        per_customer_limit: limit,
    }
}

/// A run whose state at rest is `ledger` and `holds`, the gate agreeing.
fn run(builder: Builder, ledger: Vec<Figures>, holds: Vec<LedgerHold>) -> RunRecord {
    let gate = ["gk1", "gk2"]
        .iter()
        .map(|node| Sample {
            time_ns: u64::MAX,
            source: (*node).to_owned(),
            skus: ledger.clone(),
            customers: Vec::new(),
        })
        .collect();
    RunRecord {
        started_wall_ms: BASE_WALL_MS,
        skus: builder.specs,
        history: History {
            ops: builder.ops,
            faults: Vec::new(),
            samples: Vec::new(),
        },
        fin: FinalState {
            settled: true,
            settle_note: String::new(),
            wall_ms: BASE_WALL_MS + 60_000,
            ledger,
            holds,
            movements: Vec::new(),
            gate,
            gate_errors: Vec::new(),
            audit_exit: Some(0),
            audit_output: String::new(),
            dead_letters: Vec::new(),
        },
    }
}

fn checks(run: &RunRecord) -> Vec<String> {
    let report = checker::check(run);
    let mut names: Vec<String> = report.violations.iter().map(|v| v.check.clone()).collect();
    names.dedup();
    names
}

/// Two customers take both units of sku-a; one confirms, one releases; a
/// third is told sold_out while both were out; an adjustment is answered
/// and applied once; a probe window is linearizable.
fn legal() -> (Builder, Vec<Figures>, Vec<LedgerHold>) {
    let mut b = Builder::new(vec![spec("sku-a", 2, 1, false), spec("lin-1", 1, 0, true)]);
    b.held("c1", "sku-a", "k1", "alice", "h1", 0, 10);
    b.held("c2", "sku-a", "k2", "bob", "h2", 5, 20);
    b.on_hold(
        F::Confirm,
        "c1",
        "sku-a",
        "h1",
        100,
        120,
        "confirmed",
        false,
    );
    b.admit_other(
        "c3",
        "sku-a",
        "k3",
        "carol",
        200,
        Some(210),
        Some("sold_out"),
    );
    b.on_hold(F::Release, "c2", "sku-a", "h2", 300, 310, "released", false);
    b.on_hold(F::Release, "c1", "sku-a", "h1", 400, 410, "confirmed", true);
    b.adjust("sku-a", "adj-1", 1, 500, 520, Kind::Ok);
    // Probe: two concurrent admissions for one unit, one wins.
    b.held("p1.0", "lin-1", "pk1", "pc-0", "ph1", 1000, 1050);
    b.admit_other(
        "p1.1",
        "lin-1",
        "pk2",
        "pc-1",
        1010,
        Some(1040),
        Some("sold_out"),
    );
    b.on_hold(
        F::Confirm,
        "p1.0",
        "lin-1",
        "ph1",
        1100,
        1110,
        "confirmed",
        false,
    );
    let ledger = vec![figures("sku-a", 3, 0, 1, 1), figures("lin-1", 1, 0, 1, 0)];
    let holds = vec![
        hold("h1", "sku-a", "alice", "k1", "confirmed"),
        hold("h2", "sku-a", "bob", "k2", "released"),
        hold("ph1", "lin-1", "pc-0", "pk1", "confirmed"),
    ];
    (b, ledger, holds)
}

fn legal_run() -> RunRecord {
    let (b, ledger, holds) = legal();
    let mut run = run(b, ledger, holds);
    run.fin.movements.push(Movement {
        sku: "sku-a".to_owned(),
        kind: "adjustment".to_owned(),
        hold_id: None,
        quantity_delta: 1,
        reason: Some("nemesis adj-1".to_owned()),
        committed_wall_ms: BASE_WALL_MS + 510,
    });
    run
}

#[test]
fn a_legal_history_is_accepted() {
    let run = legal_run();
    let report = checker::check(&run);
    assert!(report.violations.is_empty(), "{}", report.text(10));
    assert_eq!(report.stats.get("windows_linearizable"), Some(&1));
    assert_eq!(report.stats.get("sold_out_checked"), Some(&1));
}

#[test]
fn an_oversell_in_a_sample_is_rejected() {
    let mut run = legal_run();
    run.history.samples.push(Sample {
        time_ns: 50 * MS,
        source: "ledger".to_owned(),
        skus: vec![figures("sku-a", 2, 2, 1, 1)],
        customers: vec![
            CustomerUnits {
                sku: "sku-a".into(),
                customer: "alice".into(),
                held: 1,
                confirmed: 1,
            },
            CustomerUnits {
                sku: "sku-a".into(),
                customer: "bob".into(),
                held: 1,
                confirmed: 0,
            },
        ],
    });
    let found = checks(&run);
    assert!(found.contains(&"oversell".to_owned()), "{found:?}");
    // Alice has 2 out with a limit of 1: the same sample breaches the limit.
    assert!(found.contains(&"limit".to_owned()), "{found:?}");
}

#[test]
fn an_oversell_in_the_gate_is_rejected() {
    let mut run = legal_run();
    run.history.samples.push(Sample {
        time_ns: 50 * MS,
        source: "gk2".to_owned(),
        skus: vec![figures("sku-a", 2, 3, 0, 1)],
        customers: Vec::new(),
    });
    assert_eq!(checks(&run), vec!["oversell"]);
}

#[test]
fn a_double_hold_for_one_key_is_rejected() {
    let (mut b, ledger, mut holds) = legal();
    // k1 retried after a timeout and got a second hold.
    b.held("c1", "sku-a", "k1", "alice", "h9", 30, 40);
    holds.push(hold("h9", "sku-a", "alice", "k1", "expired"));
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    let report = checker::check(&run);
    let idempotency: Vec<_> = report
        .violations
        .iter()
        .filter(|v| v.check == "idempotency")
        .collect();
    // One for the answers, one for the ledger.
    assert_eq!(idempotency.len(), 2, "{}", report.text(10));
    assert!(idempotency[0].message.contains("2 different holds"));
    assert!(
        idempotency[1]
            .message
            .contains("the ledger has 2 holds for key k1")
    );
}

#[test]
fn a_replay_naming_another_hold_is_rejected() {
    let (mut b, ledger, holds) = legal();
    // The replay of k2 names alice's hold.
    b.held("c2", "sku-a", "k2", "bob", "h1", 30, 40);
    b.ops.last_mut().expect("an op").replayed = true;
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    let report = checker::check(&run);
    let messages: Vec<&str> = report
        .violations
        .iter()
        .filter(|v| v.check == "idempotency")
        .map(|v| v.message.as_str())
        .collect();
    assert_eq!(messages.len(), 2, "{}", report.text(10));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("key k2 of sku-a named 2 different holds"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("which the ledger has for key Some(\"k1\")"))
    );
}

#[test]
fn a_lost_confirm_is_rejected() {
    let (b, ledger, mut holds) = legal();
    holds[0].state = "expired".to_owned();
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    let report = checker::check(&run);
    let confirmed: Vec<_> = report
        .violations
        .iter()
        .filter(|v| v.check == "confirmed")
        .collect();
    assert_eq!(confirmed.len(), 1, "{}", report.text(10));
    assert!(
        confirmed[0]
            .message
            .contains("h1 was answered confirmed (200) but is expired")
    );
}

#[test]
fn a_confirmed_hold_seen_otherwise_later_is_rejected() {
    let (mut b, ledger, holds) = legal();
    b.on_hold(F::GetHold, "c1", "sku-a", "h1", 600, 610, "released", false);
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    let report = checker::check(&run);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == "confirmed" && v.message.contains("then seen released")),
        "{}",
        report.text(10)
    );
}

#[test]
fn sold_out_while_stock_was_free_is_rejected_on_a_main_sku() {
    let mut b = Builder::new(vec![spec("sku-a", 2, 0, false)]);
    b.held("c1", "sku-a", "k1", "alice", "h1", 0, 10);
    b.on_hold(F::Release, "c1", "sku-a", "h1", 20, 30, "released", false);
    // Nothing out, two units on hand: sold_out is a lie.
    b.admit_other("c2", "sku-a", "k2", "bob", 100, Some(110), Some("sold_out"));
    let holds = vec![hold("h1", "sku-a", "alice", "k1", "released")];
    let run = run(b, vec![figures("sku-a", 2, 0, 0, 0)], holds);
    let report = checker::check(&run);
    assert_eq!(report.violations.len(), 1, "{}", report.text(10));
    assert_eq!(report.violations[0].check, "rejection");
    assert!(
        report.violations[0]
            .message
            .contains("at most 0 of 2 units")
    );
}

#[test]
fn a_replayed_rejection_is_rejected() {
    let mut b = Builder::new(vec![spec("sku-a", 1, 0, false)]);
    b.admit_other("c1", "sku-a", "k1", "alice", 0, None, None);
    b.admit_other("c2", "sku-a", "k2", "bob", 100, Some(110), Some("sold_out"));
    // The retry replays the sold_out: a rejection that was stored.
    b.admit_other("c2", "sku-a", "k2", "bob", 120, Some(130), Some("sold_out"));
    b.ops.last_mut().expect("an op").replayed = true;
    let holds = vec![hold("h1", "sku-a", "alice", "k1", "expired")];
    let run = run(b, vec![figures("sku-a", 1, 0, 0, 0)], holds);
    let report = checker::check(&run);
    assert_eq!(report.violations.len(), 1, "{}", report.text(10));
    assert_eq!(report.violations[0].check, "idempotency");
    assert!(
        report.violations[0]
            .message
            .contains("key k2 of sku-a replayed a rejection")
    );
}

#[test]
fn sold_out_explained_by_an_unknown_admission_is_accepted() {
    let mut b = Builder::new(vec![spec("sku-a", 1, 0, false)]);
    // k1 timed out: it may have taken the unit (the ledger says it did).
    b.admit_other("c1", "sku-a", "k1", "alice", 0, None, None);
    b.admit_other("c2", "sku-a", "k2", "bob", 100, Some(110), Some("sold_out"));
    let holds = vec![hold("h1", "sku-a", "alice", "k1", "expired")];
    let run = run(b, vec![figures("sku-a", 1, 0, 0, 0)], holds);
    let report = checker::check(&run);
    assert!(report.violations.is_empty(), "{}", report.text(10));
    assert_eq!(report.stats.get("sold_out_checked"), Some(&1));
}

#[test]
fn sold_out_in_a_window_while_stock_was_free_is_rejected() {
    let mut b = Builder::new(vec![spec("lin-1", 2, 0, true)]);
    b.held("p1.0", "lin-1", "pk1", "pc-0", "ph1", 0, 10);
    b.admit_other(
        "p1.1",
        "lin-1",
        "pk2",
        "pc-1",
        20,
        Some(30),
        Some("sold_out"),
    );
    b.on_hold(
        F::Release,
        "p1.0",
        "lin-1",
        "ph1",
        40,
        50,
        "released",
        false,
    );
    let holds = vec![hold("ph1", "lin-1", "pc-0", "pk1", "released")];
    let run = run(b, vec![figures("lin-1", 2, 0, 0, 0)], holds);
    let report = checker::check(&run);
    assert_eq!(report.violations.len(), 1, "{}", report.text(10));
    assert_eq!(report.violations[0].check, "linearizable");
    // The op that could not be placed is listed first.
    assert!(
        report.violations[0].ops[0].contains("sold_out"),
        "{:?}",
        report.violations[0].ops
    );
}

#[test]
fn a_limit_breach_in_a_window_is_rejected() {
    let mut b = Builder::new(vec![spec("lin-1", 3, 1, true)]);
    b.held("p1.0", "lin-1", "pk1", "pc-0", "ph1", 0, 10);
    b.held("p1.1", "lin-1", "pk2", "pc-0", "ph2", 20, 30);
    let holds = vec![
        hold("ph1", "lin-1", "pc-0", "pk1", "released"),
        hold("ph2", "lin-1", "pc-0", "pk2", "released"),
    ];
    let run = run(b, vec![figures("lin-1", 3, 0, 0, 1)], holds);
    assert_eq!(checks(&run), vec!["linearizable"]);
}

#[test]
fn a_limit_breach_in_the_ledger_is_rejected() {
    let mut run = legal_run();
    run.history.samples.push(Sample {
        time_ns: 50 * MS,
        source: "ledger".to_owned(),
        skus: vec![figures("sku-a", 2, 2, 0, 1)],
        customers: vec![CustomerUnits {
            sku: "sku-a".into(),
            customer: "alice".into(),
            held: 2,
            confirmed: 0,
        }],
    });
    assert_eq!(checks(&run), vec!["limit"]);
}

#[test]
fn a_lost_hold_needs_a_redis_data_loss_after_its_admission() {
    let (b, ledger, mut holds) = legal();
    holds[1].state = "lost".to_owned();
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    // h2 was released (200) and then ended lost: two findings, no excuse.
    let found = checks(&run);
    assert!(found.contains(&"admitted".to_owned()), "{found:?}");
    // Redis restarted empty after the release began, before the ledger
    // had the hold: both are allowed.
    run.history.faults.push(Fault {
        name: "redis-restart-empty".to_owned(),
        target: "redis".to_owned(),
        start_ns: 350 * MS,
        end_ns: 360 * MS,
        data_loss: true,
        detail: String::new(),
    });
    let report = checker::check(&run);
    assert!(report.violations.is_empty(), "{}", report.text(10));
    assert_eq!(report.stats.get("holds_lost_with_redis"), Some(&1));
}

#[test]
fn an_adjustment_applied_twice_is_rejected() {
    let (mut b, ledger, holds) = legal();
    // Retried after a 503 with the same key; the ledger moved twice.
    b.adjust("sku-a", "adj-2", -1, 700, 2700, Kind::Info);
    b.adjust("sku-a", "adj-2", -1, 2800, 2810, Kind::Ok);
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    for at in [1000, 2805] {
        run.fin.movements.push(Movement {
            sku: "sku-a".to_owned(),
            kind: "adjustment".to_owned(),
            hold_id: None,
            quantity_delta: -1,
            reason: Some("nemesis adj-2".to_owned()),
            committed_wall_ms: BASE_WALL_MS + at,
        });
    }
    let report = checker::check(&run);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == "adjustment" && v.message.contains("applied 2 times")),
        "{}",
        report.text(10)
    );
}

#[test]
fn an_answered_adjustment_missing_from_the_ledger_is_rejected() {
    let mut run = legal_run();
    run.fin.movements.clear();
    let report = checker::check(&run);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == "adjustment" && v.message.contains("no such change")),
        "{}",
        report.text(10)
    );
}

#[test]
fn an_early_expiry_is_rejected() {
    let (mut b, ledger, holds) = legal();
    // h2 promised to expire at 5 + 2000 ms; seen expired at 500 ms.
    b.on_hold(F::Confirm, "c2", "sku-a", "h2", 250, 260, "expired", true);
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    let report = checker::check(&run);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == "expiry" && v.message.contains("before the expires_at")),
        "{}",
        report.text(10)
    );
}

#[test]
fn an_expires_at_from_a_skewed_clock_is_rejected() {
    let (mut b, ledger, holds) = legal();
    let op = b.ops.get_mut(0).expect("the first admission");
    op.answer = Some(
        json!({"hold_id": "h1", "state": "held", "expires_at": rfc3339(BASE_WALL_MS - 5000 + TTL_MS)}),
    );
    let mut run = run(b, ledger, holds);
    run.fin.movements = legal_run().fin.movements;
    assert_eq!(checks(&run), vec!["expiry"]);
}

#[test]
fn disagreement_at_rest_a_failed_audit_and_a_dead_letter_are_rejected() {
    let mut run = legal_run();
    run.fin.gate[1].skus[0].held = 1;
    run.fin.audit_exit = Some(1);
    run.fin
        .dead_letters
        .push("sku-a: text contains NUL".to_owned());
    let report = checker::check(&run);
    let conservation: Vec<_> = report
        .violations
        .iter()
        .filter(|v| v.check == "conservation")
        .collect();
    assert_eq!(conservation.len(), 3, "{}", report.text(10));
}

#[test]
fn the_history_survives_its_file_format() {
    let recorder = history::Recorder::new();
    let invocation = history::Invocation {
        process: "c1".to_owned(),
        sku: "sku-a".to_owned(),
        node: "gk1".to_owned(),
        key: Some("k1".to_owned()),
        customer: Some("alice".to_owned()),
        quantity: Some(1),
        ..Default::default()
    };
    let op = recorder.invoke(F::Admit, &invocation);
    recorder.invoke(F::Admit, &invocation);
    recorder.complete(
        op,
        "c1",
        history::Completion {
            kind: Kind::Ok,
            status: Some(201),
            code: None,
            answer: Some(json!({"hold_id": "h1"})),
            replayed: false,
            error: None,
        },
    );
    let path = std::env::temp_dir().join(format!("nemesis-history-{}.jsonl", std::process::id()));
    history::write_lines(&path, &recorder.lines()).expect("written");
    let read = History::from_lines(&history::read_lines(&path).expect("read"));
    let _ = std::fs::remove_file(&path);
    assert_eq!(read.ops.len(), 2);
    assert!(read.ops[0].is_admitted());
    assert_eq!(read.ops[0].answered_hold_id(), Some("h1"));
    // The second never completed: unknown outcome, no completion time.
    assert_eq!(read.ops[1].kind, Kind::Info);
    assert_eq!(read.ops[1].complete_ns, u64::MAX);
}
