//! The linearizability search's own tests: on a register (the textbook
//! cases) and on the gate model.

use crate::linear::*;

/// A register: write(v) and read() -> v.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Register(i64);

#[derive(Debug, Clone, Copy)]
enum RegOp {
    Write(i64),
    Read(i64),
    WriteUnknown(i64),
}

impl Model for Register {
    type Op = RegOp;
    fn step(&self, op: &RegOp) -> Vec<Self> {
        match *op {
            RegOp::Write(v) => vec![Register(v)],
            RegOp::Read(v) if v == self.0 => vec![self.clone()],
            RegOp::Read(_) => vec![],
            RegOp::WriteUnknown(v) => vec![Register(v), self.clone()],
        }
    }
}

fn call<O>(op: O, invoke: u64, complete: Option<u64>) -> Call<O> {
    Call {
        op,
        invoke,
        complete,
    }
}

#[test]
fn sequential_register_history_is_checked_in_real_time_order() {
    let legal = [
        call(RegOp::Write(1), 0, Some(10)),
        call(RegOp::Read(1), 20, Some(30)),
    ];
    assert_eq!(check(&Register(0), &legal, 1000), Verdict::Linearizable);
    // The read started after the write completed: it cannot see 0.
    let stale = [
        call(RegOp::Write(1), 0, Some(10)),
        call(RegOp::Read(0), 20, Some(30)),
    ];
    assert_eq!(
        check(&Register(0), &stale, 1000),
        Verdict::Illegal {
            longest: vec![0],
            stuck: 1
        }
    );
}

#[test]
fn concurrent_ops_may_take_effect_in_either_order() {
    // The read overlaps the write: seeing 0 or 1 are both fine.
    for seen in [0, 1] {
        let history = [
            call(RegOp::Write(1), 0, Some(50)),
            call(RegOp::Read(seen), 10, Some(20)),
        ];
        assert_eq!(check(&Register(0), &history, 1000), Verdict::Linearizable);
    }
    // Two reads in sequence during one write cannot go 1 then 0.
    let flicker = [
        call(RegOp::Write(1), 0, Some(100)),
        call(RegOp::Read(1), 10, Some(20)),
        call(RegOp::Read(0), 30, Some(40)),
    ];
    assert!(matches!(
        check(&Register(0), &flicker, 1000),
        Verdict::Illegal { .. }
    ));
}

#[test]
fn an_unknown_op_may_take_effect_late_or_never() {
    let late = [
        call(RegOp::WriteUnknown(7), 0, None),
        call(RegOp::Read(0), 10, Some(20)),
        call(RegOp::Read(7), 30, Some(40)),
    ];
    assert_eq!(check(&Register(0), &late, 1000), Verdict::Linearizable);
    let never = [
        call(RegOp::WriteUnknown(7), 0, None),
        call(RegOp::Read(0), 10, Some(20)),
    ];
    assert_eq!(check(&Register(0), &never, 1000), Verdict::Linearizable);
    // But not before it was invoked.
    let early = [
        call(RegOp::Read(7), 0, Some(5)),
        call(RegOp::WriteUnknown(7), 10, None),
    ];
    assert!(matches!(
        check(&Register(0), &early, 1000),
        Verdict::Illegal { .. }
    ));
}

#[test]
fn the_budget_bounds_the_search() {
    let many: Vec<_> = (0..12)
        .map(|i| call(RegOp::WriteUnknown(i), 0, None))
        .chain([call(RegOp::Read(99), 1, Some(2))])
        .collect();
    assert_eq!(check(&Register(0), &many, 50), Verdict::Undecided);
}

fn admit(key: usize, customer: usize, outcome: AdmitOutcome) -> GateOp {
    GateOp::Admit {
        key,
        customer,
        quantity: 1,
        outcome,
    }
}

#[test]
fn the_gate_model_sells_what_it_has_and_no_more() {
    let gate = Gate::new(1, 0, 1, 3, 3);
    let legal = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(
            admit(1, 1, AdmitOutcome::SoldOut { replayed: false }),
            20,
            Some(30),
        ),
        call(
            GateOp::Release {
                key: 0,
                outcome: HoldOutcome::Ok(HoldState::Released),
            },
            40,
            Some(50),
        ),
        call(admit(2, 2, AdmitOutcome::Held), 60, Some(70)),
    ];
    assert_eq!(check(&gate, &legal, 10_000), Verdict::Linearizable);
    let oversold = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(admit(1, 1, AdmitOutcome::Held), 20, Some(30)),
    ];
    assert!(matches!(
        check(&gate, &oversold, 10_000),
        Verdict::Illegal { stuck: 1, .. }
    ));
}

#[test]
fn the_gate_model_explains_sold_out_by_an_unknown_admission() {
    let gate = Gate::new(1, 0, 1, 2, 2);
    // Key 0 timed out: it may have taken the unit, so sold_out is fine.
    let explained = [
        call(admit(0, 0, AdmitOutcome::Unknown), 0, None),
        call(
            admit(1, 1, AdmitOutcome::SoldOut { replayed: false }),
            20,
            Some(30),
        ),
    ];
    assert_eq!(check(&gate, &explained, 10_000), Verdict::Linearizable);
    // Without it, stock was free.
    let unexplained = [call(
        admit(1, 1, AdmitOutcome::SoldOut { replayed: false }),
        20,
        Some(30),
    )];
    assert!(matches!(
        check(&gate, &unexplained, 10_000),
        Verdict::Illegal { .. }
    ));
}

#[test]
fn the_gate_model_keeps_confirmed_holds_confirmed() {
    let gate = Gate::new(2, 0, 1, 1, 1);
    let history = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(
            GateOp::Confirm {
                key: 0,
                outcome: HoldOutcome::Ok(HoldState::Confirmed),
            },
            20,
            Some(30),
        ),
        call(
            GateOp::Release {
                key: 0,
                outcome: HoldOutcome::Ok(HoldState::Released),
            },
            40,
            Some(50),
        ),
    ];
    assert!(matches!(
        check(&gate, &history, 10_000),
        Verdict::Illegal { stuck: 2, .. }
    ));
}

#[test]
fn the_gate_model_enforces_the_limit_and_replays() {
    let gate = Gate::new(5, 1, 1, 3, 1);
    let history = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(
            admit(1, 0, AdmitOutcome::LimitExceeded { replayed: false }),
            20,
            Some(30),
        ),
        // The same key again: decided afresh (a rejection stores nothing).
        call(
            admit(1, 0, AdmitOutcome::LimitExceeded { replayed: false }),
            40,
            Some(50),
        ),
        // Key 0 again: the same hold.
        call(admit(0, 0, AdmitOutcome::Held), 60, Some(70)),
    ];
    assert_eq!(check(&gate, &history, 10_000), Verdict::Linearizable);
    let breach = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(admit(2, 0, AdmitOutcome::Held), 20, Some(30)),
    ];
    assert!(matches!(
        check(&gate, &breach, 10_000),
        Verdict::Illegal { .. }
    ));
    // A rejection is never replayed: it was never stored.
    let one_unit = Gate::new(1, 0, 1, 2, 2);
    for (gate, rejected) in [
        (&gate, AdmitOutcome::LimitExceeded { replayed: false }),
        (&one_unit, AdmitOutcome::SoldOut { replayed: false }),
    ] {
        let replay = match rejected {
            AdmitOutcome::SoldOut { .. } => AdmitOutcome::SoldOut { replayed: true },
            _ => AdmitOutcome::LimitExceeded { replayed: true },
        };
        let customer = usize::from(matches!(rejected, AdmitOutcome::SoldOut { .. }));
        let replayed = [
            call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
            call(admit(1, customer, rejected), 20, Some(30)),
            call(admit(1, customer, replay), 40, Some(50)),
        ];
        assert!(matches!(
            check(gate, &replayed, 10_000),
            Verdict::Illegal { .. }
        ));
    }
}

#[test]
fn the_gate_model_limits_extensions() {
    let gate = Gate::new(1, 0, 1, 1, 1);
    let extend = |outcome| GateOp::Extend { key: 0, outcome };
    let history = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(extend(HoldOutcome::Ok(HoldState::Held)), 20, Some(30)),
        call(extend(HoldOutcome::ExtensionLimit), 40, Some(50)),
    ];
    assert_eq!(check(&gate, &history, 10_000), Verdict::Linearizable);
    let twice = [
        call(admit(0, 0, AdmitOutcome::Held), 0, Some(10)),
        call(extend(HoldOutcome::Ok(HoldState::Held)), 20, Some(30)),
        call(extend(HoldOutcome::Ok(HoldState::Held)), 40, Some(50)),
    ];
    assert!(matches!(
        check(&gate, &twice, 10_000),
        Verdict::Illegal { .. }
    ));
}
