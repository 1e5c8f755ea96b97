//! Linearizability on short windows: is there an order of the operations,
//! each placed somewhere between its invocation and its completion, in
//! which a sequential model of the gate gives every answer the clients saw?
//!
//! The search is Wing & Gong's, with Lowe's cache of (operations placed,
//! model state) configurations already explored, as in knossos' `linear`
//! and porcupine. An operation whose outcome is unknown (`info`) never
//! completes: it may take effect at any point after its invocation, with any
//! outcome the model allows, or not at all.
//!
//! The model is one SKU's gate: admit (held, sold_out, limit_exceeded, and
//! replays of a key's hold; a rejection is never replayed), confirm, release, extend and reads of a
//! hold. Probe SKUs are created fresh for each window with a long hold TTL,
//! so nothing expires inside a window and the initial state is known.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash {
    type Op;
    /// Every state the model may be in after `op` took effect with the
    /// outcome the client saw; empty when that outcome is impossible here.
    /// An op with an unknown outcome lists the state after each possible
    /// outcome, and the unchanged state (it may never have happened).
    fn step(&self, op: &Self::Op) -> Vec<Self>;
}

/// One operation of the history, with its real-time interval.
#[derive(Debug, Clone)]
pub struct Call<O> {
    pub op: O,
    pub invoke: u64,
    /// `None`: the outcome is unknown, the op may take effect at any time
    /// after its invocation.
    pub complete: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order works. `longest` is the longest prefix of an order that the
    /// model accepted (indexes into the calls); `stuck` is the op, among
    /// those not in it, that completed first: the one no order could place.
    Illegal {
        longest: Vec<usize>,
        stuck: usize,
    },
    /// The search gave up after its budget of steps.
    Undecided,
}

const HEAD: usize = 0;
const NONE: usize = usize::MAX;

/// The history as a doubly linked list of call and return entries in time
/// order. Placing an op unlinks its two entries; backtracking relinks them
/// (in reverse order, so the stored neighbours are right again).
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For entry i (1-based): the op, whether it is the call, and for a
    /// call the index of its return entry.
    op: Vec<usize>,
    is_call: Vec<bool>,
    ret: Vec<usize>,
}

impl Entries {
    fn new<O>(calls: &[Call<O>]) -> Self {
        // (time, 0 = call / 1 = return, op): at equal times a call comes
        // first, so the two ops count as concurrent.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(calls.len() * 2);
        for (i, call) in calls.iter().enumerate() {
            events.push((call.invoke, 0, i));
            events.push((call.complete.unwrap_or(u64::MAX), 1, i));
        }
        events.sort();
        let size = events.len() + 1;
        let mut entries = Self {
            next: vec![NONE; size],
            prev: vec![NONE; size],
            op: vec![0; size],
            is_call: vec![false; size],
            ret: vec![NONE; size],
        };
        let mut call_entry = vec![NONE; calls.len()];
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            let entry = position + 1;
            entries.op[entry] = op;
            entries.is_call[entry] = kind == 0;
            if kind == 0 {
                call_entry[op] = entry;
            } else {
                entries.ret[call_entry[op]] = entry;
            }
            entries.prev[entry] = entry - 1;
            entries.next[entry - 1] = entry;
        }
        entries
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NONE {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NONE {
            self.prev[next] = entry;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.ret[call]);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Searches for an order of `calls` that `init` accepts, in at most
/// `budget` steps.
pub fn check<M: Model>(init: &M, calls: &[Call<M::Op>], budget: usize) -> Verdict {
    let mut entries = Entries::new(calls);
    let mut placed = Bits::new(calls.len());
    let mut cache: HashSet<(Bits, M)> = HashSet::new();
    // (call entry, state before it, alternative taken)
    let mut stack: Vec<(usize, M, usize)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state = init.clone();
    let mut entry = entries.next[HEAD];
    let mut steps = 0usize;

    // Tries the alternatives of `call`'s op from `from` on; the first that
    // leads to an unexplored configuration is taken.
    let attempt = |state: &M,
                   placed: &Bits,
                   cache: &mut HashSet<(Bits, M)>,
                   op: usize,
                   from: usize|
     -> Option<(usize, M)> {
        let next = state.step(&calls[op].op);
        for (alternative, candidate) in next.into_iter().enumerate().skip(from) {
            let mut bits = placed.clone();
            bits.set(op);
            if cache.insert((bits, candidate.clone())) {
                return Some((alternative, candidate));
            }
        }
        None
    };

    loop {
        if entries.next[HEAD] == NONE {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::Undecided;
        }
        if entry != NONE && entries.is_call[entry] {
            let op = entries.op[entry];
            match attempt(&state, &placed, &mut cache, op, 0) {
                Some((alternative, next)) => {
                    stack.push((entry, std::mem::replace(&mut state, next), alternative));
                    placed.set(op);
                    entries.lift(entry);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|(e, _, _)| entries.op[*e]).collect();
                    }
                    entry = entries.next[HEAD];
                }
                None => entry = entries.next[entry],
            }
            continue;
        }
        // A return of an op not placed yet: this prefix cannot be extended.
        let Some((call, before, alternative)) = stack.pop() else {
            let stuck = (0..calls.len())
                .filter(|i| !longest.contains(i))
                .min_by_key(|&i| (calls[i].complete.unwrap_or(u64::MAX), calls[i].invoke))
                .unwrap_or(0);
            return Verdict::Illegal { longest, stuck };
        };
        let op = entries.op[call];
        placed.clear(op);
        state = before;
        entries.unlift(call);
        match attempt(&state, &placed, &mut cache, op, alternative + 1) {
            Some((alternative, next)) => {
                stack.push((call, std::mem::replace(&mut state, next), alternative));
                placed.set(op);
                entries.lift(call);
                entry = entries.next[HEAD];
            }
            None => entry = entries.next[call],
        }
    }
}

/// A hold's state, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
    Lost,
}

impl HoldState {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "held" => Self::Held,
            "confirmed" => Self::Confirmed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "lost" => Self::Lost,
            _ => return None,
        })
    }

    /// The 409 code a transition gets from this state.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::parse(code.strip_prefix("hold_")?)
    }
}

/// What an admission answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// 201, first answer or replay: either way it names the key's hold.
    Held,
    SoldOut {
        replayed: bool,
    },
    LimitExceeded {
        replayed: bool,
    },
    /// A refusal that changed nothing (429, 422, a refused connection).
    Refused,
    Unknown,
}

/// What a confirm, release, extend or read of a hold answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// 200 with the hold in this state.
    Ok(HoldState),
    /// 409 `hold_<state>`.
    Conflict(HoldState),
    ExtensionLimit,
    NotFound,
    Refused,
    Unknown,
}

/// An operation on the model. Holds are named by the key that admitted
/// them; keys and customers by small indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOp {
    Admit {
        key: usize,
        customer: usize,
        quantity: i64,
        outcome: AdmitOutcome,
    },
    Confirm {
        key: usize,
        outcome: HoldOutcome,
    },
    Release {
        key: usize,
        outcome: HoldOutcome,
    },
    Extend {
        key: usize,
        outcome: HoldOutcome,
    },
    Read {
        key: usize,
        outcome: HoldOutcome,
    },
}

/// What an idempotency key has recorded. A rejection records nothing
/// (API.md): the key stays fresh, and a retry is decided afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRecord {
    Fresh,
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ModelHold {
    customer: usize,
    quantity: i64,
    state: HoldState,
    extensions: i64,
}

/// One SKU's gate as a sequential object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gate {
    on_hand: i64,
    held: i64,
    sold: i64,
    /// 0 = no limit.
    limit: i64,
    max_extensions: i64,
    keys: Vec<KeyRecord>,
    holds: Vec<Option<ModelHold>>,
    /// Units each customer holds or bought.
    customers: Vec<i64>,
}

impl Gate {
    pub fn new(
        on_hand: i64,
        limit: i64,
        max_extensions: i64,
        keys: usize,
        customers: usize,
    ) -> Self {
        Self {
            on_hand,
            held: 0,
            sold: 0,
            limit,
            max_extensions,
            keys: vec![KeyRecord::Fresh; keys],
            holds: vec![None; keys],
            customers: vec![0; customers],
        }
    }

    /// Every answer an admission may get here, with the state after it.
    fn admissions(&self, key: usize, customer: usize, quantity: i64) -> Vec<(AdmitOutcome, Self)> {
        let record = self.keys[key];
        if record == KeyRecord::Held {
            return vec![(AdmitOutcome::Held, self.clone())];
        }
        let mut answers = Vec::new();
        let sold_out = self.on_hand - self.held - self.sold < quantity;
        let over_limit = self.limit > 0 && self.customers[customer] + quantity > self.limit;
        if !sold_out && !over_limit {
            let mut next = self.clone();
            next.held += quantity;
            next.customers[customer] += quantity;
            next.keys[key] = KeyRecord::Held;
            next.holds[key] = Some(ModelHold {
                customer,
                quantity,
                state: HoldState::Held,
                extensions: 0,
            });
            answers.push((AdmitOutcome::Held, next));
        }
        if sold_out {
            answers.push((AdmitOutcome::SoldOut { replayed: false }, self.clone()));
        }
        if over_limit {
            answers.push((
                AdmitOutcome::LimitExceeded { replayed: false },
                self.clone(),
            ));
        }
        answers
    }

    /// Every answer a transition (or read) of `key`'s hold may get here.
    fn transitions(&self, op: &GateOp, key: usize) -> Vec<(HoldOutcome, Self)> {
        let Some(hold) = self.holds[key] else {
            return vec![(HoldOutcome::NotFound, self.clone())];
        };
        let same = |outcome| vec![(outcome, self.clone())];
        match (op, hold.state) {
            (GateOp::Read { .. }, state) => same(HoldOutcome::Ok(state)),
            (GateOp::Confirm { .. }, HoldState::Held) => {
                let mut next = self.clone();
                next.held -= hold.quantity;
                next.sold += hold.quantity;
                next.set_state(key, HoldState::Confirmed);
                vec![(HoldOutcome::Ok(HoldState::Confirmed), next)]
            }
            (GateOp::Confirm { .. }, HoldState::Confirmed) => {
                same(HoldOutcome::Ok(HoldState::Confirmed))
            }
            (GateOp::Release { .. }, HoldState::Held) => {
                let mut next = self.clone();
                next.held -= hold.quantity;
                next.customers[hold.customer] -= hold.quantity;
                next.set_state(key, HoldState::Released);
                vec![(HoldOutcome::Ok(HoldState::Released), next)]
            }
            (GateOp::Release { .. }, HoldState::Released) => {
                same(HoldOutcome::Ok(HoldState::Released))
            }
            (GateOp::Extend { .. }, HoldState::Held) if hold.extensions < self.max_extensions => {
                let mut next = self.clone();
                if let Some(h) = next.holds[key].as_mut() {
                    h.extensions += 1;
                }
                vec![(HoldOutcome::Ok(HoldState::Held), next)]
            }
            (GateOp::Extend { .. }, HoldState::Held) => same(HoldOutcome::ExtensionLimit),
            (_, state) => same(HoldOutcome::Conflict(state)),
        }
    }

    fn set_state(&mut self, key: usize, state: HoldState) {
        if let Some(hold) = self.holds[key].as_mut() {
            hold.state = state;
        }
    }
}

impl Model for Gate {
    type Op = GateOp;

    fn step(&self, op: &GateOp) -> Vec<Self> {
        let mut next: Vec<Self> = match *op {
            GateOp::Admit {
                key,
                customer,
                quantity,
                outcome,
            } => {
                let answers = self.admissions(key, customer, quantity);
                match outcome {
                    AdmitOutcome::Unknown => answers.into_iter().map(|(_, s)| s).collect(),
                    AdmitOutcome::Refused => Vec::new(),
                    seen => answers
                        .into_iter()
                        .filter(|(answer, _)| *answer == seen)
                        .map(|(_, s)| s)
                        .collect(),
                }
            }
            GateOp::Confirm { key, outcome }
            | GateOp::Release { key, outcome }
            | GateOp::Extend { key, outcome }
            | GateOp::Read { key, outcome } => {
                let answers = self.transitions(op, key);
                match outcome {
                    HoldOutcome::Unknown => answers.into_iter().map(|(_, s)| s).collect(),
                    HoldOutcome::Refused => Vec::new(),
                    seen => answers
                        .into_iter()
                        .filter(|(answer, _)| *answer == seen)
                        .map(|(_, s)| s)
                        .collect(),
                }
            }
        };
        let unknown_or_refused = matches!(
            op,
            GateOp::Admit {
                outcome: AdmitOutcome::Unknown | AdmitOutcome::Refused,
                ..
            } | GateOp::Confirm {
                outcome: HoldOutcome::Unknown | HoldOutcome::Refused,
                ..
            } | GateOp::Release {
                outcome: HoldOutcome::Unknown | HoldOutcome::Refused,
                ..
            } | GateOp::Extend {
                outcome: HoldOutcome::Unknown | HoldOutcome::Refused,
                ..
            } | GateOp::Read {
                outcome: HoldOutcome::Unknown | HoldOutcome::Refused,
                ..
            }
        );
        if unknown_or_refused && !next.contains(self) {
            next.push(self.clone());
        }
        next
    }
}
