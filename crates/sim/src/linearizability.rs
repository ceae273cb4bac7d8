//! Linearizability checking for histories of a replicated register store.
//!
//! A history is linearizable when every operation can be given a single point in time, between
//! its invocation and its response, at which it took effect, such that the operations taken in
//! the order of those points form a legal sequential history of the store.
//!
//! # Approach
//!
//! - **P-compositionality.** Keys are independent registers, and a history is linearizable iff
//!   each key's sub-history is (Herlihy & Wing's locality), so each key is searched separately.
//!   This turns one exponential search into many small ones.
//! - **Wing–Gong search with Lowe's memoization.** Call and return events of a key are kept in
//!   time order in a doubly linked list. Walking it from the front, the search tentatively
//!   linearizes any operation whose call it meets (it is "minimal": nothing has to come before
//!   it), removing both its events; meeting a return means that operation should already have
//!   been linearized, so the last choice is undone. A configuration is the set of linearized
//!   operations plus the register value; one already explored is never explored again, which is
//!   what keeps histories with a few concurrent clients cheap to check.
//! - **Unknown outcomes.** An operation with no output (the client timed out or crashed) may
//!   take effect at any time after its call, or never. It is given no return event, so it can be
//!   linearized at any point after its call and is never *required*: the search succeeds once
//!   every operation with a known outcome is linearized, and an unknown operation left over at
//!   that point is one that took effect last or not at all — both indistinguishable to everyone.
//! - **Taming unknown outcomes.** Unknown ops are never blocked, so naively the search would try
//!   every subset of them at every point. Three exact reductions keep crash-heavy histories
//!   cheap: the search only builds canonical linearizations, where an unknown op takes effect
//!   only right before an op that observes it (see `observes`); a configuration is skipped when
//!   one with the same known ops and register value but fewer unknown ops spent was explored
//!   (see `KeySearch::remember`); and written values nobody reads are merged into one.
//!
//! The search uses an explicit stack (no recursion) and stops after a step budget, reporting
//! [`CheckResult::Unknown`] rather than running for hours on a pathological history.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Input of an operation on one key of a replicated register store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Set the register to `value`.
    Put {
        /// The value written.
        value: u64,
    },
    /// Read the register.
    Get,
    /// Set the register to `new` iff it currently holds `expected` (`None`: absent).
    Cas {
        /// The value the register must hold for the swap to happen.
        expected: Option<u64>,
        /// The value written when the swap happens.
        new: u64,
    },
}

/// What the operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// The put was acknowledged.
    Put,
    /// The value read (`None`: absent).
    Get(Option<u64>),
    /// Whether the swap happened.
    Cas(bool),
}

/// One client operation as observed by the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation.
    pub client: u64,
    /// The key (register) the operation acts on.
    pub key: u64,
    /// What the client asked for.
    pub input: KvInput,
    /// None: the outcome is unknown (client timed out / node crashed): the op may or may not have
    /// taken effect, at any time after `call`.
    pub output: Option<KvOutput>,
    /// Invocation time. All call/return timestamps in a history are distinct (a global event
    /// counter).
    pub call: u64,
    /// Return time; ignored when output is None (treated as +infinity).
    pub ret: u64,
}

/// The verdict on a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history is linearizable.
    Ok,
    /// No linearization exists for this key's sub-history.
    Illegal {
        /// The key whose sub-history has no linearization.
        key: u64,
        /// Human-readable evidence: the size of the sub-history, the longest linearizable prefix
        /// the search found, and the operation it could not get past.
        detail: String,
    },
    /// Search exceeded the step budget for this key (not a proven violation).
    Unknown {
        /// The smallest key whose search ran out of budget.
        key: u64,
    },
}

/// Checks a whole history; returns the first Illegal found (keys visited in ascending order),
/// else Unknown if any key ran out of budget, else Ok.
///
/// `max_steps_per_key` bounds the search of each key separately; a step is one event visited.
/// It bounds memory too: each step remembers at most one configuration. As a guide, histories
/// of a few hundred ops from ten clients writing distinct values, a tenth of them with unknown
/// outcomes, take well under 10^7 steps even when illegal; steps run at about 10^7 per second.
///
/// # Panics
///
/// On a malformed history, which is a bug in whoever recorded it: an output whose kind does not
/// match the input, a known-outcome operation with `ret <= call`, or two events of one key with
/// the same timestamp (the real-time order between them would be ambiguous).
pub fn check(history: &[Operation], max_steps_per_key: u64) -> CheckResult {
    let mut partitions: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        assert_well_formed(index, op);
        // A read whose answer nobody saw neither changes nor observes anything.
        if op.output.is_none() && op.input == KvInput::Get {
            continue;
        }
        partitions.entry(op.key).or_default().push(index);
    }

    let mut first_out_of_budget = None;
    for (&key, indices) in &partitions {
        match KeySearch::new(history, indices).run(max_steps_per_key) {
            Verdict::Linearizable => {}
            Verdict::Illegal(detail) => return CheckResult::Illegal { key, detail },
            Verdict::OutOfBudget => {
                first_out_of_budget.get_or_insert(key);
            }
        }
    }
    match first_out_of_budget {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Ok,
    }
}

fn assert_well_formed(index: usize, op: &Operation) {
    let Some(output) = &op.output else { return };
    let kinds_match = matches!(
        (&op.input, output),
        (KvInput::Put { .. }, KvOutput::Put)
            | (KvInput::Get, KvOutput::Get(_))
            | (KvInput::Cas { .. }, KvOutput::Cas(_))
    );
    assert!(
        kinds_match,
        "history[{index}]: output {output:?} does not answer input {:?}",
        op.input
    );
    assert!(
        op.call < op.ret,
        "history[{index}]: returns at {} but was called at {}",
        op.ret,
        op.call
    );
}

/// Applies an op to a register holding `state`. Returns the register's new value, or `None` when
/// the op's recorded output is impossible from `state`.
fn apply(state: Register, input: &KvInput, output: Option<&KvOutput>) -> Option<Register> {
    match (input, output) {
        (KvInput::Put { value }, _) => Some(Some(*value)),
        (KvInput::Get, Some(KvOutput::Get(seen))) => (*seen == state).then_some(state),
        // Unknown reads are dropped by `check`; if one got here it would constrain nothing.
        (KvInput::Get, _) => Some(state),
        (KvInput::Cas { expected, new }, output) => {
            let swaps = state == *expected;
            match output {
                Some(KvOutput::Cas(swapped)) if *swapped != swaps => None,
                // Unknown outcome: whatever the register holds decides, as it would have.
                _ => Some(if swaps { Some(*new) } else { state }),
            }
        }
    }
}

/// The content of one register: `None` while absent.
type Register = Option<u64>;

/// Besides which ops are linearized, what decides where a search can go from a configuration:
/// the register's value, and the value before the unknown op just linearized, if any, whose
/// change the next op must observe (see `observes`).
type Situation = (Register, Option<Register>);

/// Whether `op`, legal right after an unknown op changed the register away from `before`,
/// depends on that change: it would be illegal from `before`, or would leave a different value.
///
/// # Canonical linearizations
///
/// Unknown ops never have to be linearized and are never blocked by a return, so without care
/// the search tries every subset of them at every point: exponential in their number, which a
/// crash-heavy simulation makes large. Every linearization can be rewritten into a canonical one
/// that the search restricts itself to, by three moves that keep it legal and respecting real
/// time (an unknown op has no return, so moving it later or dropping it never breaks real-time
/// order):
///
/// 1. An unknown op that leaves the register unchanged (a failing CAS, a put of the value already
///    there) is dropped: it "never took effect".
/// 2. An unknown op `U` taking the register from `before` to `after`, immediately followed by an
///    op that does not depend on that change, is moved after that op or dropped: before a put
///    `U` is overwritten unseen (drop it); before a failing CAS that would fail from `before` too,
///    the two commute (swap them). Every other op legal from `after` depends on the change: a
///    read returns `after != before`, a successful CAS expected `after`.
/// 3. Unknown ops with the same input are interchangeable once called, so the ones that take
///    effect are the earliest called, in call order.
///
/// Each of 1–2 shortens the sequence or moves an unknown op later, so rewriting terminates, and
/// 3 only renames. The search therefore only linearizes an unknown op that changes the register,
/// whose earlier twins are all linearized, and only follows it with an op this function accepts.
fn observes(input: &KvInput, output: Option<&KvOutput>, before: Register) -> bool {
    match (input, output) {
        (KvInput::Put { .. }, _) => false,
        (KvInput::Cas { expected, .. }, Some(KvOutput::Cas(false))) => *expected == before,
        // Legal from `after` means it read `after` or expected `after`; unknown CAS ops are
        // only linearized when they succeed.
        (KvInput::Get, _) | (KvInput::Cas { .. }, _) => true,
    }
}

enum Verdict {
    Linearizable,
    Illegal(String),
    OutOfBudget,
}

/// Sentinel of the list of known-outcome ops' calls and returns, in time order.
const HEAD: usize = 0;
/// Sentinel of the list of unknown-outcome ops' calls, in time order.
const UNKNOWN_HEAD: usize = 1;

/// One linearization decision, kept to undo it.
struct Choice {
    op: usize,
    /// The register's value before `op`.
    before: Register,
    /// For an unknown op, the unknown candidates it was chosen among, to resume trying them.
    siblings: Option<UnknownCandidates>,
}

/// Which unknown ops are worth trying from a configuration, worked out once the walk of known
/// ops reaches the first pending return.
#[derive(Default)]
struct UnknownCandidates {
    /// Time of the first pending return: only unknown ops called before it can come next.
    deadline: u64,
    /// A candidate known CAS failed expecting the current value: any change would be observed.
    any_change_observed: bool,
    /// Values that some candidate would observe, were the register to hold them.
    observed_values: Vec<Register>,
}

impl UnknownCandidates {
    /// Whether some op that can come next would observe an unknown op leaving `after` (rule 2 of
    /// `observes`): if none would, trying that unknown op is bound to fail one step later.
    fn worth_leaving(&self, after: Register) -> bool {
        self.any_change_observed || self.observed_values.contains(&after)
    }
}

/// The search over one key's sub-history.
///
/// Unknown ops live in a list of their own so that, at each configuration, every known op is
/// tried before any unknown one: configurations that spent fewer unknown ops are then explored
/// first, and they dominate the later ones that spent more (see `remember`).
struct KeySearch<'a> {
    history: &'a [Operation],
    /// Indices into `history` of this key's operations; "op `i`" below means `ops[i]`.
    ops: &'a [usize],
    /// Each op's input with every written value nobody ever reads replaced by one stand-in value.
    ///
    /// A value that no read returns and no CAS expects can only be told apart from another such
    /// value by nobody, so mapping them all to one keeps every op's legality while letting the
    /// memo and rule 3 of `observes` treat, say, two lost puts of different unread values as
    /// the same configuration and twins.
    inputs: Vec<KvInput>,
    /// Two circular doubly linked lists of event nodes, through `HEAD` and `UNKNOWN_HEAD`.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each event node: its op, its time, and whether it is the op's call.
    event_op: Vec<usize>,
    event_time: Vec<u64>,
    event_is_call: Vec<bool>,
    call_node: Vec<usize>,
    /// `None` for unknown-outcome ops, which never have to be linearized.
    return_node: Vec<Option<usize>>,
    /// Each op's position among the known ops, or among the unknown ones: its bit in the
    /// matching bitset.
    slot: Vec<usize>,
    known_count: usize,
    /// For an unknown op, the latest-called earlier unknown op with the same input (see
    /// `observes`, rule 3).
    twin_before: Vec<Option<usize>>,
    /// Lowe's memo, extended with dominance: linearized known ops → (register value, what the
    /// next op must observe) → the minimal sets of linearized unknown ops explored with them.
    explored: BTreeMap<Vec<u64>, BTreeMap<Situation, Vec<Vec<u64>>>>,
}

impl<'a> KeySearch<'a> {
    fn new(history: &'a [Operation], ops: &'a [usize]) -> Self {
        // (time, op, is_call)
        let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(2 * ops.len());
        for (i, &index) in ops.iter().enumerate() {
            let op = &history[index];
            events.push((op.call, i, true));
            if op.output.is_some() {
                events.push((op.ret, i, false));
            }
        }
        events.sort_unstable();
        for pair in events.windows(2) {
            assert!(
                pair[0].0 != pair[1].0,
                "history[{}] and history[{}] (key {}) share timestamp {}: real-time order is ambiguous",
                ops[pair[0].1],
                ops[pair[1].1],
                history[ops[0]].key,
                pair[0].0
            );
        }

        let mut mentioned = BTreeSet::new();
        let mut read = BTreeSet::new();
        for &index in ops {
            let op = &history[index];
            match (&op.input, &op.output) {
                (KvInput::Put { value }, _) => {
                    mentioned.insert(*value);
                }
                (KvInput::Get, Some(KvOutput::Get(Some(value)))) => {
                    read.insert(*value);
                }
                (KvInput::Get, _) => {}
                (KvInput::Cas { expected, new }, _) => {
                    mentioned.insert(*new);
                    read.extend(*expected);
                }
            }
        }
        mentioned.extend(&read);
        let unread = (0..)
            .find(|v| !mentioned.contains(v))
            .expect("a history mentions finitely many values");
        let canonical = |value: u64| if read.contains(&value) { value } else { unread };
        let inputs = ops
            .iter()
            .map(|&index| match history[index].input {
                KvInput::Put { value } => KvInput::Put {
                    value: canonical(value),
                },
                KvInput::Get => KvInput::Get,
                KvInput::Cas { expected, new } => KvInput::Cas {
                    expected,
                    new: canonical(new),
                },
            })
            .collect();

        let nodes = events.len() + 2;
        let mut search = KeySearch {
            history,
            ops,
            inputs,
            next: (0..nodes).collect(),
            prev: (0..nodes).collect(),
            event_op: vec![usize::MAX; nodes],
            event_time: vec![0; nodes],
            event_is_call: vec![false; nodes],
            call_node: vec![HEAD; ops.len()],
            return_node: vec![None; ops.len()],
            slot: vec![0; ops.len()],
            known_count: 0,
            twin_before: vec![None; ops.len()],
            explored: BTreeMap::new(),
        };
        let mut unknown_count = 0;
        // Events are in time order, so each unknown op meets its earlier twins first.
        let mut latest_with_input: Vec<(KvInput, usize)> = Vec::new();
        for (n, &(time, i, is_call)) in events.iter().enumerate() {
            let node = n + 2;
            let known = history[ops[i]].output.is_some();
            search.event_op[node] = i;
            search.event_time[node] = time;
            search.event_is_call[node] = is_call;
            search.append(if known { HEAD } else { UNKNOWN_HEAD }, node);
            if !is_call {
                search.return_node[i] = Some(node);
                continue;
            }
            search.call_node[i] = node;
            if known {
                search.slot[i] = search.known_count;
                search.known_count += 1;
                continue;
            }
            search.slot[i] = unknown_count;
            unknown_count += 1;
            let input = &search.inputs[i];
            match latest_with_input.iter_mut().find(|(seen, _)| seen == input) {
                Some((_, latest)) => {
                    search.twin_before[i] = Some(*latest);
                    *latest = i;
                }
                None => latest_with_input.push((input.clone(), i)),
            }
        }
        search
    }

    fn op(&self, i: usize) -> &'a Operation {
        &self.history[self.ops[i]]
    }

    fn is_known(&self, i: usize) -> bool {
        self.return_node[i].is_some()
    }

    fn run(mut self, max_steps: u64) -> Verdict {
        let unknown_count = self.ops.len() - self.known_count;
        let mut state: Register = None;
        let mut known_done = vec![0u64; self.known_count.div_ceil(64)];
        let mut unknown_done = vec![0u64; unknown_count.div_ceil(64)];
        let mut stack: Vec<Choice> = Vec::with_capacity(self.ops.len());
        let mut longest = Prefix::default();
        let mut unlinearized_known = self.known_count;
        let mut steps = 0u64;
        let mut node = self.next[HEAD];
        let mut unknown_candidates = UnknownCandidates::default();

        while unlinearized_known > 0 {
            if steps == max_steps {
                return Verdict::OutOfBudget;
            }
            steps += 1;
            // A known op's return stays listed until it is linearized, and it follows its call.
            assert_ne!(
                node, HEAD,
                "walked past every event with a known op still pending"
            );
            let in_unknown_list = node == UNKNOWN_HEAD || !self.is_known(self.event_op[node]);

            if !in_unknown_list && !self.event_is_call[node] {
                unknown_candidates = self.unknown_candidates(state, self.event_time[node]);
                node = self.next[UNKNOWN_HEAD];
                continue;
            }
            if in_unknown_list
                && (node == UNKNOWN_HEAD || self.event_time[node] > unknown_candidates.deadline)
            {
                // Every candidate was tried and the first pending return's op was not
                // linearized before it returned: the latest choice was wrong. With no choice
                // left to undo, no linearization exists.
                let Some(undone) = stack.pop() else {
                    return Verdict::Illegal(self.describe(&longest));
                };
                let i = undone.op;
                state = undone.before;
                if self.is_known(i) {
                    set_bit(&mut known_done, self.slot[i], false);
                    unlinearized_known += 1;
                } else {
                    set_bit(&mut unknown_done, self.slot[i], false);
                    unknown_candidates = undone.siblings.expect("unknown choices keep siblings");
                }
                self.unlift(i);
                node = self.next[self.call_node[i]];
                continue;
            }

            let i = self.event_op[node];
            let known = self.is_known(i);
            let output = self.op(i).output.as_ref();
            let Some(after) = apply(state, &self.inputs[i], output) else {
                node = self.next[node];
                continue;
            };
            // Canonical-form pruning for unknown ops (see `observes`).
            let pointless = !known
                && (after == state
                    || self.twin_before[i]
                        .is_some_and(|twin| !bit(&unknown_done, self.slot[twin])));
            let must_observe = match stack.last() {
                Some(top) if !self.is_known(top.op) => Some(top.before),
                _ => None,
            };
            let unobserving =
                must_observe.is_some_and(|before| !observes(&self.inputs[i], output, before));
            let unobservable = !known && !unknown_candidates.worth_leaving(after);
            if pointless || unobserving || unobservable {
                node = self.next[node];
                continue;
            }
            let done = if known {
                &mut known_done
            } else {
                &mut unknown_done
            };
            set_bit(done, self.slot[i], true);
            let must_observe_next = (!known).then_some(state);
            if !self.remember(&known_done, (after, must_observe_next), &unknown_done) {
                let done = if known {
                    &mut known_done
                } else {
                    &mut unknown_done
                };
                set_bit(done, self.slot[i], false);
                node = self.next[node];
                continue;
            }
            let siblings = (!known).then(|| std::mem::take(&mut unknown_candidates));
            stack.push(Choice {
                op: i,
                before: state,
                siblings,
            });
            state = after;
            self.lift(i);
            if known {
                unlinearized_known -= 1;
            }
            if stack.len() > longest.ops.len() {
                longest = Prefix {
                    ops: stack.iter().map(|choice| choice.op).collect(),
                };
            }
            node = self.next[HEAD];
        }
        Verdict::Linearizable
    }

    /// Works out which unknown ops are worth trying from the current configuration, where the
    /// register holds `state` and the first pending return happens at `deadline`.
    ///
    /// An unknown op is only linearized right before an op that observes it (see `observes`),
    /// and that op must be one of the current candidates: the known ops called before
    /// `deadline`, or another unknown op. Over-approximating is fine; missing one is not.
    fn unknown_candidates(&self, state: Register, deadline: u64) -> UnknownCandidates {
        let mut candidates = UnknownCandidates {
            deadline,
            ..UnknownCandidates::default()
        };
        let mut node = self.next[HEAD];
        while self.event_is_call[node] {
            let i = self.event_op[node];
            match (&self.inputs[i], self.op(i).output.as_ref()) {
                (KvInput::Get, Some(KvOutput::Get(seen))) => candidates.observed_values.push(*seen),
                (KvInput::Cas { expected, .. }, Some(KvOutput::Cas(true))) => {
                    candidates.observed_values.push(*expected);
                }
                (KvInput::Cas { expected, .. }, Some(KvOutput::Cas(false))) => {
                    candidates.any_change_observed |= *expected == state;
                }
                _ => {}
            }
            node = self.next[node];
        }
        let mut node = self.next[UNKNOWN_HEAD];
        while node != UNKNOWN_HEAD && self.event_time[node] < deadline {
            if let KvInput::Cas { expected, .. } = &self.inputs[self.event_op[node]] {
                candidates.observed_values.push(*expected);
            }
            node = self.next[node];
        }
        candidates
    }

    /// Records a configuration about to be explored; false if it is not worth exploring.
    ///
    /// Beyond Lowe's exact memo, a configuration is skipped when one with the same known ops,
    /// register value and pending observation, but a subset of its unknown ops, was explored:
    /// unknown ops are never required and never expire, so having more of them left can only
    /// help, and any completion of the new configuration also completes the old one (spending,
    /// per rule 3 of `observes`, earlier-called twins in place of the same ops).
    fn remember(&mut self, known_done: &[u64], situation: Situation, unknown_done: &[u64]) -> bool {
        if !self.explored.contains_key(known_done) {
            self.explored.insert(known_done.to_vec(), BTreeMap::new());
        }
        let by_situation = self.explored.get_mut(known_done).expect("inserted above");
        let minimal = by_situation.entry(situation).or_default();
        if minimal.iter().any(|seen| is_subset(seen, unknown_done)) {
            return false;
        }
        minimal.retain(|seen| !is_subset(unknown_done, seen));
        minimal.push(unknown_done.to_vec());
        true
    }

    fn append(&mut self, head: usize, node: usize) {
        let last = self.prev[head];
        self.next[last] = node;
        self.prev[node] = last;
        self.next[node] = head;
        self.prev[head] = node;
    }

    fn lift(&mut self, i: usize) {
        self.unlink(self.call_node[i]);
        if let Some(ret) = self.return_node[i] {
            self.unlink(ret);
        }
    }

    /// Undoes `lift(i)`. Lifts and unlifts nest like the stack, so relinking in reverse order of
    /// unlinking restores the list exactly (dancing links).
    fn unlift(&mut self, i: usize) {
        if let Some(ret) = self.return_node[i] {
            self.relink(ret);
        }
        self.relink(self.call_node[i]);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn describe(&self, longest: &Prefix) -> String {
        /// Keeps the message readable; the tail of the prefix is where the trouble is.
        const MAX_LISTED: usize = 10;
        let unknown = (0..self.ops.len())
            .filter(|&i| self.return_node[i].is_none())
            .count();
        let mut detail = format!(
            "no linearization of {} ops ({unknown} of unknown outcome); \
             longest linearizable prefix has {} ops",
            self.ops.len(),
            longest.ops.len()
        );
        let skipped = longest.ops.len().saturating_sub(MAX_LISTED);
        if skipped > 0 {
            let _ = write!(detail, ", the last {MAX_LISTED} being:");
        } else {
            detail.push(':');
        }
        for &i in &longest.ops[skipped..] {
            let _ = write!(detail, "\n  {}", self.describe_op(i));
        }
        // The search ran on canonical values; replaying the real ones names the real value.
        let holds = longest.ops.iter().fold(None, |state, &i| {
            let op = self.op(i);
            apply(state, &op.input, op.output.as_ref())
                .expect("canonical values keep every op's legality")
        });
        let _ = write!(detail, "\nafter which the register holds {holds:?}");

        // Of the known ops the prefix leaves out, the first to return is the one the search could
        // not get past: some op its caller had already seen finish.
        let in_prefix: BTreeSet<usize> = longest.ops.iter().copied().collect();
        let stuck = (0..self.ops.len())
            .filter(|&i| self.return_node[i].is_some() && !in_prefix.contains(&i))
            .min_by_key(|&i| self.op(i).ret);
        if let Some(i) = stuck {
            let _ = write!(
                detail,
                "\nand the earliest-returning op left out is\n  {}",
                self.describe_op(i)
            );
        }
        detail
    }

    fn describe_op(&self, i: usize) -> String {
        let op = self.op(i);
        let input = match &op.input {
            KvInput::Put { value } => format!("Put({value})"),
            KvInput::Get => "Get".to_string(),
            KvInput::Cas { expected, new } => format!("Cas({expected:?} -> {new})"),
        };
        let (output, ret) = match &op.output {
            None => ("?".to_string(), "?".to_string()),
            Some(KvOutput::Put) => ("ok".to_string(), op.ret.to_string()),
            Some(KvOutput::Get(value)) => (format!("{value:?}"), op.ret.to_string()),
            Some(KvOutput::Cas(swapped)) => (swapped.to_string(), op.ret.to_string()),
        };
        format!(
            "history[{}] client {}: {input} = {output} [call {}, ret {ret}]",
            self.ops[i], op.client, op.call
        )
    }
}

/// The longest sequence of ops the search managed to linearize, for the report.
#[derive(Default)]
struct Prefix {
    ops: Vec<usize>,
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1u64 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    let mask = 1u64 << (i % 64);
    if on {
        bits[i / 64] |= mask;
    } else {
        bits[i / 64] &= !mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Generous: every hand-written history here needs a few dozen steps at most.
    const BUDGET: u64 = 1_000_000;

    fn put(client: u64, value: u64, call: u64, ret: u64) -> Operation {
        let input = KvInput::Put { value };
        Operation {
            client,
            key: 0,
            input,
            output: Some(KvOutput::Put),
            call,
            ret,
        }
    }

    fn get(client: u64, seen: Option<u64>, call: u64, ret: u64) -> Operation {
        let output = Some(KvOutput::Get(seen));
        Operation {
            client,
            key: 0,
            input: KvInput::Get,
            output,
            call,
            ret,
        }
    }

    fn cas(
        client: u64,
        expected: Option<u64>,
        new: u64,
        swapped: bool,
        call: u64,
        ret: u64,
    ) -> Operation {
        let input = KvInput::Cas { expected, new };
        Operation {
            client,
            key: 0,
            input,
            output: Some(KvOutput::Cas(swapped)),
            call,
            ret,
        }
    }

    /// The client gave up at `ret`: nobody knows whether or when the op took effect.
    fn timed_out(op: Operation) -> Operation {
        Operation { output: None, ..op }
    }

    fn on_key(key: u64, op: Operation) -> Operation {
        Operation { key, ..op }
    }

    fn assert_linearizable(history: &[Operation]) {
        assert_eq!(
            check(history, BUDGET),
            CheckResult::Ok,
            "history: {history:#?}"
        );
    }

    fn assert_illegal(history: &[Operation]) -> String {
        match check(history, BUDGET) {
            CheckResult::Illegal { key: 0, detail } => detail,
            other => panic!("expected Illegal on key 0, got {other:?} for {history:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_puts_gets_and_cas_are_linearizable() {
        assert_linearizable(&[
            get(1, None, 0, 1),
            put(1, 5, 2, 3),
            get(2, Some(5), 4, 5),
            cas(3, Some(5), 6, true, 6, 7),
            cas(1, Some(5), 7, false, 8, 9),
            get(2, Some(6), 10, 11),
        ]);
    }

    #[test]
    fn never_written_key_reads_as_absent() {
        assert_linearizable(&[get(1, None, 0, 1)]);
        assert_illegal(&[get(1, Some(0), 0, 1)]);
    }

    #[test]
    fn stale_read_after_completed_write_is_illegal() {
        assert_illegal(&[put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, Some(1), 4, 5)]);
    }

    #[test]
    fn read_concurrent_with_write_may_return_old_or_new_value() {
        for seen in [Some(1), Some(2)] {
            assert_linearizable(&[put(1, 1, 0, 1), put(1, 2, 2, 5), get(2, seen, 3, 4)]);
        }
    }

    #[test]
    fn read_concurrent_with_write_cannot_return_a_value_never_written() {
        assert_illegal(&[put(1, 1, 0, 1), put(1, 2, 2, 5), get(2, Some(3), 3, 4)]);
        assert_illegal(&[put(1, 1, 0, 1), put(1, 2, 2, 5), get(2, None, 3, 4)]);
    }

    #[test]
    fn read_may_not_return_old_value_after_an_earlier_read_saw_the_new_one() {
        // The write is in flight throughout; once a read has returned its value, a read that
        // starts later must not go back in time.
        assert_illegal(&[put(1, 1, 0, 10), get(2, Some(1), 1, 2), get(3, None, 3, 4)]);
        // The other way round is fine: the write took effect between the reads.
        assert_linearizable(&[put(1, 1, 0, 10), get(2, None, 1, 2), get(3, Some(1), 3, 4)]);
    }

    #[test]
    fn readers_observing_concurrent_writes_in_contradictory_orders_is_illegal() {
        // Reader 3 sees 1 then 2; reader 4, strictly later, sees 2 then 1: 1 would have to be
        // written twice.
        let writes = [put(1, 1, 0, 20), put(2, 2, 1, 21)];
        let reader_3 = [get(3, Some(1), 2, 3), get(3, Some(2), 4, 5)];
        let contradicting = [get(4, Some(2), 6, 7), get(4, Some(1), 8, 9)];
        let agreeing = [get(4, Some(2), 6, 7), get(4, Some(2), 8, 9)];
        assert_illegal(&[&writes[..], &reader_3, &contradicting].concat());
        assert_linearizable(&[&writes[..], &reader_3, &agreeing].concat());
    }

    #[test]
    fn chain_of_successful_cas_is_linearizable() {
        assert_linearizable(&[
            cas(1, None, 1, true, 0, 1),
            cas(2, Some(1), 2, true, 2, 3),
            cas(1, Some(2), 3, true, 4, 5),
            get(2, Some(3), 6, 7),
        ]);
    }

    #[test]
    fn two_concurrent_cas_from_the_same_value_cannot_both_succeed() {
        let both = [
            put(1, 1, 0, 1),
            cas(2, Some(1), 2, true, 2, 5),
            cas(3, Some(1), 3, true, 3, 6),
        ];
        assert_illegal(&both);
        let one = [
            put(1, 1, 0, 1),
            cas(2, Some(1), 2, true, 2, 5),
            cas(3, Some(1), 3, false, 3, 6),
        ];
        assert_linearizable(&one);
    }

    #[test]
    fn cas_that_fails_although_the_value_matched_is_illegal() {
        assert_illegal(&[put(1, 1, 0, 1), cas(2, Some(1), 5, false, 2, 3)]);
        assert_illegal(&[cas(2, None, 5, false, 0, 1)]);
    }

    #[test]
    fn cas_that_succeeds_although_the_value_differed_is_illegal() {
        assert_illegal(&[put(1, 1, 0, 1), cas(2, Some(2), 5, true, 2, 3)]);
        assert_illegal(&[cas(2, Some(1), 5, true, 0, 1)]);
    }

    #[test]
    fn cas_may_fail_when_a_concurrent_write_can_come_first() {
        assert_linearizable(&[
            put(1, 1, 0, 1),
            put(1, 2, 2, 5),
            cas(2, Some(1), 3, false, 3, 4),
            get(2, Some(2), 6, 7),
        ]);
    }

    #[test]
    fn unknown_write_may_have_taken_effect() {
        assert_linearizable(&[timed_out(put(1, 1, 0, 1)), get(2, Some(1), 2, 3)]);
    }

    #[test]
    fn unknown_write_may_never_take_effect() {
        assert_linearizable(&[
            timed_out(put(1, 1, 0, 1)),
            get(2, None, 2, 3),
            put(2, 2, 4, 5),
            get(2, Some(2), 6, 7),
        ]);
    }

    #[test]
    fn unknown_write_may_take_effect_after_its_client_gave_up() {
        // The request can sit in a leader's log long after the client's timeout fired.
        assert_linearizable(&[
            timed_out(put(1, 1, 0, 1)),
            get(2, None, 2, 3),
            get(2, Some(1), 4, 5),
        ]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_it_was_called() {
        assert_illegal(&[get(2, Some(1), 0, 1), timed_out(put(1, 1, 2, 3))]);
    }

    #[test]
    fn unknown_write_takes_effect_at_most_once() {
        assert_illegal(&[
            timed_out(put(1, 1, 0, 1)),
            get(2, Some(1), 2, 3),
            put(2, 2, 4, 5),
            get(2, Some(1), 6, 7),
        ]);
    }

    #[test]
    fn unknown_write_of_a_value_nobody_reads_can_explain_a_failed_cas() {
        let history = [
            put(1, 1, 0, 1),
            timed_out(put(2, 2, 2, 3)),
            cas(3, Some(1), 5, false, 4, 5),
        ];
        assert_linearizable(&history);
        assert_illegal(&[history[0].clone(), history[2].clone()]);
    }

    #[test]
    fn identical_unknown_writes_can_each_take_effect_once() {
        let twice = [
            timed_out(put(1, 1, 0, 1)),
            timed_out(put(2, 1, 2, 3)),
            get(3, Some(1), 4, 5),
            put(3, 2, 6, 7),
            get(3, Some(1), 8, 9),
        ];
        assert_linearizable(&twice);
        let thrice = [&twice[..], &[put(3, 3, 10, 11), get(3, Some(1), 12, 13)]].concat();
        assert_illegal(&thrice);
    }

    #[test]
    fn unknown_cas_may_or_may_not_have_swapped() {
        let before = [put(1, 1, 0, 1), timed_out(cas(1, Some(1), 2, true, 2, 3))];
        assert_linearizable(&[&before[..], &[get(2, Some(2), 4, 5)]].concat());
        assert_linearizable(&[&before[..], &[get(2, Some(1), 4, 5)]].concat());
        assert_illegal(&[&before[..], &[get(2, Some(3), 4, 5)]].concat());
    }

    #[test]
    fn unknown_cas_cannot_swap_from_a_value_the_register_never_held() {
        let history = [
            put(1, 1, 0, 1),
            timed_out(cas(1, Some(7), 2, true, 2, 3)),
            get(2, Some(2), 4, 5),
        ];
        assert_illegal(&history);
    }

    #[test]
    fn unknown_read_constrains_nothing() {
        let history = [
            put(1, 1, 0, 1),
            timed_out(get(2, Some(9), 2, 3)),
            get(3, Some(1), 4, 5),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn violation_is_reported_with_the_key_it_happened_on() {
        let history = [
            on_key(7, put(1, 1, 0, 1)),
            on_key(9, get(2, Some(4), 2, 3)),
            on_key(3, put(1, 1, 4, 5)),
            on_key(3, get(2, Some(2), 6, 7)),
            on_key(7, get(2, Some(1), 8, 9)),
        ];
        match check(&history, BUDGET) {
            CheckResult::Illegal { key: 3, detail } => {
                assert!(detail.contains("Get = Some(2)"), "{detail}")
            }
            other => panic!("expected key 3 (the lowest bad key) to be reported, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_independent_registers() {
        let history = [
            on_key(1, put(1, 1, 0, 1)),
            on_key(2, get(2, None, 2, 3)),
            on_key(1, get(2, Some(1), 4, 5)),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn key_that_exhausts_its_budget_is_unknown_not_illegal() {
        let history = [on_key(4, put(1, 1, 0, 1)), on_key(4, get(2, Some(2), 2, 3))];
        assert_eq!(check(&history, 0), CheckResult::Unknown { key: 4 });
    }

    #[test]
    fn illegal_key_is_reported_even_after_a_lower_key_exhausted_its_budget() {
        // Key 1 needs a step per put, at least; key 2's violation takes a handful.
        let mut history: Vec<Operation> = (0..20)
            .map(|n| on_key(1, put(1, n, 2 * n, 2 * n + 1)))
            .collect();
        let puts_only = history.clone();
        history.push(on_key(2, get(2, Some(5), 100, 101)));
        assert_eq!(check(&puts_only, 5), CheckResult::Unknown { key: 1 });
        assert!(matches!(
            check(&history, 5),
            CheckResult::Illegal { key: 2, .. }
        ));
        assert_eq!(check(&puts_only, BUDGET), CheckResult::Ok);
    }

    #[test]
    fn illegal_detail_gives_size_longest_prefix_and_stuck_op() {
        let detail = assert_illegal(&[put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, Some(1), 4, 5)]);
        assert!(
            detail.contains("of 3 ops (0 of unknown outcome)"),
            "{detail}"
        );
        assert!(
            detail.contains("longest linearizable prefix has 2 ops"),
            "{detail}"
        );
        assert!(detail.contains("register holds Some(2)"), "{detail}");
        assert!(
            detail.contains("history[2] client 2: Get = Some(1) [call 4, ret 5]"),
            "{detail}"
        );
    }

    #[test]
    #[should_panic(expected = "share timestamp")]
    fn history_with_a_repeated_timestamp_is_rejected() {
        check(&[put(1, 1, 0, 2), get(2, Some(1), 2, 3)], BUDGET);
    }

    #[test]
    #[should_panic(expected = "does not answer input")]
    fn output_of_the_wrong_kind_is_rejected() {
        let op = Operation {
            output: Some(KvOutput::Cas(true)),
            ..put(1, 1, 0, 1)
        };
        check(&[op], BUDGET);
    }

    /// One scheduler decision: which client acts, what it does, and two parameters.
    type Step = (u8, u8, u8, u8);

    /// What the generated clients write.
    #[derive(Clone, Copy, Debug)]
    enum Values {
        /// Drawn from `0..FEW_VALUES`, so that writes collide and reads are ambiguous: hard for
        /// the checker, kept to small histories.
        Few,
        /// Every write is distinct, as the simulator's clients write them.
        Unique,
    }

    const FEW_VALUES: u64 = 4;

    /// Generated histories never write this.
    const NEVER_WRITTEN: u64 = u64::MAX;

    fn apply_to(register: &mut Option<u64>, input: &KvInput) -> KvOutput {
        match *input {
            KvInput::Put { value } => {
                *register = Some(value);
                KvOutput::Put
            }
            KvInput::Get => KvOutput::Get(*register),
            KvInput::Cas { expected, new } => {
                let swaps = *register == expected;
                if swaps {
                    *register = Some(new);
                }
                KvOutput::Cas(swaps)
            }
        }
    }

    /// Runs `clients` clients against a sequential store of `keys` registers, each op taking
    /// effect at a point inside its [call, ret] interval, so the history is linearizable by
    /// construction. About one op in six times out: it either had already taken effect, or it
    /// may take effect later (even after the timeout) or never.
    fn linearizable_history(
        clients: u64,
        keys: u64,
        values: Values,
        timeout_one_in: u8,
        steps: &[Step],
    ) -> Vec<Operation> {
        let mut writes = 0u64;
        let mut registers = vec![None; keys as usize];
        let mut history: Vec<Operation> = Vec::new();
        // Per client: the op in flight, and its output once it has taken effect.
        let mut in_flight: Vec<Option<(usize, Option<KvOutput>)>> = vec![None; clients as usize];
        // Timed out before taking effect; may still take effect.
        let mut floating: Vec<usize> = Vec::new();
        let mut now = 0u64;
        for &(who, action, p, q) in steps {
            if action % 8 == 7 && !floating.is_empty() {
                let op = floating.remove(q as usize % floating.len());
                let key = history[op].key as usize;
                apply_to(&mut registers[key], &history[op].input);
                continue;
            }
            let client = u64::from(who) % clients;
            let slot = &mut in_flight[client as usize];
            match slot.take() {
                None => {
                    let q = u64::from(q);
                    let (value, expected) = match values {
                        Values::Few => {
                            let expected = (q / FEW_VALUES) % (FEW_VALUES + 1);
                            (q % FEW_VALUES, expected.checked_sub(1))
                        }
                        // Expect one of the last few values written, as a client that read
                        // recently would.
                        Values::Unique => (
                            writes,
                            (q % 4)
                                .checked_sub(1)
                                .map(|back| writes.saturating_sub(back + 1)),
                        ),
                    };
                    let input = match action % 3 {
                        0 => KvInput::Put { value },
                        1 => KvInput::Get,
                        _ => KvInput::Cas {
                            expected,
                            new: value,
                        },
                    };
                    if input != KvInput::Get {
                        writes += 1;
                    }
                    let key = u64::from(p) % keys;
                    history.push(Operation {
                        client,
                        key,
                        input,
                        output: None,
                        call: now,
                        ret: 0,
                    });
                    *slot = Some((history.len() - 1, None));
                }
                Some((op, None)) if p % timeout_one_in == 0 => {
                    history[op].ret = now;
                    floating.push(op);
                }
                Some((op, None)) => {
                    let key = history[op].key as usize;
                    let output = apply_to(&mut registers[key], &history[op].input);
                    *slot = Some((op, Some(output)));
                    // Taking effect is not an observable event: the clock does not move.
                    continue;
                }
                Some((op, Some(output))) => {
                    history[op].ret = now;
                    if p % timeout_one_in != 0 {
                        history[op].output = Some(output);
                    }
                }
            }
            now += 1;
        }
        // Ops still in flight when the run ends have unknown outcomes, like crashed clients'.
        for (op, _) in in_flight.into_iter().flatten() {
            history[op].ret = now;
            now += 1;
        }
        history
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(any::<Step>(), 0..160)
    }

    proptest! {
        #[test]
        fn histories_with_a_linearization_inside_every_interval_are_accepted(
            clients in 1u64..6,
            keys in 1u64..4,
            values in prop_oneof![Just(Values::Few), Just(Values::Unique)],
            steps in steps(),
        ) {
            let history = linearizable_history(clients, keys, values, 6, &steps);
            prop_assert_eq!(check(&history, BUDGET), CheckResult::Ok);
        }

        #[test]
        fn read_of_a_value_never_written_is_illegal(
            clients in 1u64..6,
            keys in 1u64..4,
            values in prop_oneof![Just(Values::Few), Just(Values::Unique)],
            steps in steps(),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut history = linearizable_history(clients, keys, values, 6, &steps);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].output, Some(KvOutput::Get(_))))
                .collect();
            prop_assume!(!reads.is_empty());
            let corrupted = reads[pick.index(reads.len())];
            history[corrupted].output = Some(KvOutput::Get(Some(NEVER_WRITTEN)));
            let key = history[corrupted].key;
            match check(&history, BUDGET) {
                CheckResult::Illegal { key: reported, .. } => prop_assert_eq!(reported, key),
                other => prop_assert!(false, "expected Illegal on key {}, got {:?}", key, other),
            }
        }
    }

    /// Reference semantics, by brute force: tries every order of the ops that respects real
    /// time, with each unknown op either taking effect somewhere after its call or never. Its
    /// only shortcut is remembering dead ends (ops left, register value), which is exact.
    fn linearizable_by_brute_force(history: &[Operation]) -> bool {
        fn extend(
            history: &[Operation],
            left: u32,
            state: Register,
            dead_ends: &mut BTreeSet<(u32, Register)>,
        ) -> bool {
            let pending = |i: usize| left & (1 << i) != 0;
            if (0..history.len()).all(|i| !pending(i) || history[i].output.is_none()) {
                return true;
            }
            if dead_ends.contains(&(left, state)) {
                return false;
            }
            for (i, op) in history.iter().enumerate() {
                let blocked = (0..history.len())
                    .any(|j| pending(j) && history[j].output.is_some() && history[j].ret < op.call);
                if !pending(i) || blocked {
                    continue;
                }
                let Some(after) = apply(state, &op.input, op.output.as_ref()) else {
                    continue;
                };
                if extend(history, left & !(1 << i), after, dead_ends) {
                    return true;
                }
            }
            dead_ends.insert((left, state));
            false
        }
        assert!(history.len() < 32);
        extend(
            history,
            (1 << history.len()) - 1,
            None,
            &mut BTreeSet::new(),
        )
    }

    /// Up to 14 ops with arbitrary outputs on one key: (start, length, kind, a, b, unknown).
    fn arbitrary_history() -> impl Strategy<Value = Vec<Operation>> {
        let op = (
            0u8..20,
            0u8..8,
            0u8..3,
            0u8..4,
            0u8..4,
            proptest::bool::weighted(0.4),
        );
        proptest::collection::vec(op, 0..15).prop_map(|raw| {
            // Rank the endpoints to make every timestamp distinct.
            let mut ends: Vec<(u8, usize, bool)> = Vec::new();
            for (n, &(start, length, ..)) in raw.iter().enumerate() {
                ends.push((start, n, true));
                ends.push((start + length + 1, n, false));
            }
            ends.sort_by_key(|&(at, n, is_call)| (at, !is_call, n));
            let mut times = vec![(0, 0); raw.len()];
            for (rank, &(_, n, is_call)) in ends.iter().enumerate() {
                if is_call {
                    times[n].0 = rank as u64;
                } else {
                    times[n].1 = rank as u64;
                }
            }
            let value = |v: u8| (v > 0).then(|| u64::from(v) - 1);
            raw.iter()
                .zip(times)
                .enumerate()
                .map(|(n, (&(_, _, kind, a, b, unknown), (call, ret)))| {
                    let (input, output) = match kind {
                        0 => (
                            KvInput::Put {
                                value: u64::from(a),
                            },
                            KvOutput::Put,
                        ),
                        1 => (KvInput::Get, KvOutput::Get(value(a))),
                        _ => {
                            let input = KvInput::Cas {
                                expected: value(a),
                                new: u64::from(b),
                            };
                            (input, KvOutput::Cas(b % 2 == 0))
                        }
                    };
                    let output = (!unknown).then_some(output);
                    Operation {
                        client: n as u64,
                        key: 0,
                        input,
                        output,
                        call,
                        ret,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Guards the pruning: canonical forms, dominance and value merging must not change
        /// any verdict.
        #[test]
        fn verdict_matches_brute_force_on_small_histories(history in arbitrary_history()) {
            let expected = linearizable_by_brute_force(&history);
            let verdict = check(&history, BUDGET);
            prop_assert_eq!(verdict == CheckResult::Ok, expected, "{:?}", verdict);
        }
    }

    /// The simulator's scale: one hot key, ten clients, hundreds of ops, a tenth of them with
    /// unknown outcomes. Corrupting the last read is the worst case: every configuration before
    /// it has to be explored before the search can give up. (Steps are cheap: tens of millions
    /// take about a second.)
    #[test]
    fn hundreds_of_ops_from_ten_clients_on_one_key_check_within_budget() {
        const SIMULATOR_BUDGET: u64 = 50_000_000;
        for seed in 0..4 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let steps: Vec<Step> = (0..1200).map(|_| rng.gen()).collect();
            let mut history = linearizable_history(10, 1, Values::Unique, 20, &steps);
            assert!(
                history.len() >= 300,
                "seed {seed}: only {} ops",
                history.len()
            );
            assert_eq!(
                check(&history, SIMULATOR_BUDGET),
                CheckResult::Ok,
                "seed {seed}"
            );

            let last_read = history
                .iter()
                .rposition(|op| matches!(op.output, Some(KvOutput::Get(_))))
                .expect("1200 steps produce reads");
            history[last_read].output = Some(KvOutput::Get(Some(NEVER_WRITTEN)));
            let verdict = check(&history, SIMULATOR_BUDGET);
            assert!(
                matches!(verdict, CheckResult::Illegal { key: 0, .. }),
                "seed {seed}: {verdict:?}"
            );
        }
    }
}
