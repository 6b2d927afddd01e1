//! A linearizability checker for histories of a key-value store of registers.
//!
//! Tests that run concurrent clients against a replicated cluster record what each
//! client asked and what it was told (an [`Op`] per call, most easily with a
//! [`Recorder`]), then ask [`check`] whether the cluster behaved like one register per
//! key, each operation taking effect atomically at some instant between its invocation
//! and its completion.
//!
//! # The model
//!
//! Every key is a register holding `Option<String>` (`None`: absent, the initial
//! value). A call is a read, a write, or a compare-and-set ([`Kind`]). A call whose
//! reply never came (timeout, lost connection: `complete: None`) may have taken effect
//! at any instant after its invocation, or never; such a read tells nothing and is
//! dropped.
//!
//! # The search
//!
//! Keys are independent registers, and linearizability is compositional: a history is
//! linearizable exactly when each key's sub-history is. Each key is checked on its own,
//! with the Wing & Gong search as refined by Lowe ("WGL"):
//!
//! - Operation `a` *precedes* `b` when `a` completed before `b` was invoked
//!   (`a.complete < b.invoke`; equal timestamps count as concurrent). A linearization
//!   must respect that order.
//! - An operation is *minimal* (may be linearized next) when no operation still left
//!   precedes it, that is when it was invoked no later than the earliest completion
//!   among the completed operations still left. Operations without a reply complete
//!   "at infinity": they never hold anything back.
//! - The search repeatedly picks a minimal operation that the register allows in its
//!   current state (a read must see the current value, a successful compare-and-set
//!   must find its expected value, ...), applies it, and goes on; when nothing fits it
//!   backtracks to the last choice. It succeeds once every *completed* operation is
//!   linearized; operations without a reply may be left out (they never took effect).
//! - Memoisation: whether the search can succeed from some point depends only on which
//!   operations are linearized so far and on the register's value, not on the order
//!   they were linearized in (the operations left, their precedence constraints and
//!   their possible effects are all determined by those two). So each configuration
//!   (set of linearized operations, value) is explored at most once: met again, it
//!   already failed (the search stops at the first success, and a configuration cannot
//!   recur on the current path because the set only grows along it). With the first
//!   reduction below, whether the last call linearized got no reply is part of the
//!   configuration too, since it restricts what may come next.
//! - Calls without reply can each come anywhere after their invocation, or nowhere,
//!   which multiplies the configurations. Three reductions that change no verdict
//!   keep that in check (leaving out a call without reply never breaks a
//!   linearization, as it holds nothing back):
//!   - such a call is only tried when it changes the value and the next call tests
//!     that value (a read or a compare-and-set, not a write): otherwise leaving it out
//!     does as well;
//!   - of several such calls doing the same thing, only the earliest-invoked one left
//!     is tried (once it may come, it may come at any later point, so they can swap
//!     places);
//!   - values written but never read nor expected by anyone share one number: no
//!     operation can tell them apart.
//!
//! Before searching, a completed call that needs a value no call on its key ever wrote
//! is reported at once. The search uses an explicit stack, so long histories do not
//! overflow the thread's stack, and counts its steps (attempts to apply an operation):
//! past a budget it gives up with [`Violation::GaveUp`] rather than run for hours on a
//! long, very concurrent history. (Accepting a linearizable history is typically quick;
//! proving that none of the orders of a long one works is what takes steps.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The step budget (per key) that [`check`] and [`Recorder::check`] use.
pub const DEFAULT_MAX_STEPS: usize = 5_000_000;

/// One operation of a history: a call one client made on one key, and what it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Who made the call. Only used in reports: the checker assumes nothing about one
    /// client's calls (a client that timed out may have moved on while its call was
    /// still in flight).
    pub client: usize,
    /// The key (the register) the call is about.
    pub key: String,
    /// What the call did, and (when it completed) what it returned.
    pub kind: Kind,
    /// When the call was made, in nanoseconds since the history began.
    pub invoke: u64,
    /// When its reply came, in nanoseconds since the history began (no earlier than
    /// `invoke`). `None`: the outcome is unknown (timed out, connection lost): it may
    /// or may not have taken effect, at any instant after `invoke`.
    pub complete: Option<u64>,
}

/// What an [`Op`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A read, and the value it returned (`None`: the key was absent). Ignored when
    /// the read never completed.
    Read {
        /// What the read returned.
        seen: Option<String>,
    },
    /// A write of `value`.
    Write {
        /// The value written.
        value: String,
    },
    /// A compare-and-set: set `value` if the register holds `expect`.
    Cas {
        /// The value the register must hold for the write to happen (`None`: absent).
        expect: Option<String>,
        /// The value written on success.
        value: String,
        /// Whether the call reported success. A failed call read something other
        /// than `expect`. Ignored when the call never completed: it then either never
        /// took effect, or took effect and succeeded only if the register held
        /// `expect` at that instant.
        ok: bool,
    },
}

/// `"value"`, or `absent` for `None`.
fn show(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "absent".to_owned(),
    }
}

/// `client 1 read "k" -> "v" [20ns..30ns]`, `client 0 write "k" := "v" [5ns.., no reply]`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let replied = self.complete.is_some();
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            Kind::Read { seen } if replied => {
                write!(f, "read {key:?} -> {}", show(seen.as_deref()))?;
            }
            Kind::Read { .. } => write!(f, "read {key:?} -> ?")?,
            Kind::Write { value } => write!(f, "write {key:?} := {value:?}")?,
            Kind::Cas { expect, value, ok } => {
                let outcome = match (replied, ok) {
                    (false, _) => "?",
                    (true, true) => "ok",
                    (true, false) => "failed",
                };
                write!(
                    f,
                    "cas {key:?} {} -> {value:?}: {outcome}",
                    show(expect.as_deref())
                )?;
            }
        }
        match self.complete {
            Some(complete) => write!(f, " [{}ns..{complete}ns]", self.invoke),
            None => write!(f, " [{}ns.., no reply]", self.invoke),
        }
    }
}

/// Why a history is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No order of `key`'s operations is consistent both with their real-time order
    /// and with a register.
    NotLinearizable {
        /// The key whose sub-history is not linearizable.
        key: String,
        /// That key's sub-history, ordered by invocation.
        ops: Vec<Op>,
        /// What the search found: the longest linearizable prefix, and the operations
        /// that could not be placed after it, with the reason.
        explanation: String,
    },
    /// The search for `key` ran out of its step budget before reaching a verdict
    /// (treat it as a failure: a long search mostly means a violation the search has
    /// not finished ruling every order out for).
    GaveUp {
        /// The key being checked.
        key: String,
        /// How many operations that key's sub-history has.
        ops: usize,
        /// The steps taken (the budget).
        steps: usize,
        /// How far the search got: the longest linearizable prefix it found, and the
        /// completed operation left that completed first.
        explanation: String,
    },
}

impl Violation {
    /// The key the violation is about.
    pub fn key(&self) -> &str {
        match self {
            Violation::NotLinearizable { key, .. } | Violation::GaveUp { key, .. } => key,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable {
                key,
                ops,
                explanation,
            } => {
                let replied = ops.iter().filter(|op| op.complete.is_some()).count();
                writeln!(
                    f,
                    "the history of key {key:?} is not linearizable ({} ops: {replied} completed, {} without reply)",
                    ops.len(),
                    ops.len() - replied
                )?;
                write!(f, "{explanation}")
            }
            Violation::GaveUp {
                key,
                ops,
                steps,
                explanation,
            } => {
                writeln!(
                    f,
                    "gave up checking key {key:?} ({ops} ops) after {steps} search steps, without a \
                     verdict: the history is too long or too concurrent for the budget (raise it with \
                     check_with_budget, or check shorter histories)"
                )?;
                write!(f, "{explanation}")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Checks that `history` is linearizable, with [`DEFAULT_MAX_STEPS`] steps per key.
///
/// See [`check_with_budget`].
pub fn check(history: &[Op]) -> Result<(), Violation> {
    check_with_budget(history, DEFAULT_MAX_STEPS)
}

/// Checks that `history` is linearizable, each key's search taking at most `max_steps`
/// steps (attempts to apply an operation to the register).
///
/// The keys are checked in order; a [`Violation::NotLinearizable`] on any key is
/// reported in preference to a [`Violation::GaveUp`] on another.
///
/// # Panics
///
/// If an operation completes before it was invoked.
pub fn check_with_budget(history: &[Op], max_steps: usize) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        if let Some(complete) = op.complete {
            assert!(
                complete >= op.invoke,
                "an operation completes before it was invoked: {op}"
            );
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut gave_up = None;
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.invoke);
        match check_key(key, &ops, max_steps) {
            Ok(()) => {}
            Err(violation @ Violation::NotLinearizable { .. }) => return Err(violation),
            Err(violation) => {
                gave_up.get_or_insert(violation);
            }
        }
    }
    gave_up.map_or(Ok(()), Err)
}

/// The values of one key's sub-history, numbered: the search compares and memoises
/// numbers rather than strings.
///
/// Only values that some operation tests the register against (a completed read's
/// result, a compare-and-set's expectation) get a number of their own. Values written
/// but never tested share one number: no operation can tell them apart (a read or a
/// successful compare-and-set fits none of them, a failed compare-and-set fits all),
/// so merging them changes no verdict, and it lets the search treat, say, a hundred
/// unacknowledged writes of distinct, never-read values as interchangeable.
struct Values<'a> {
    ids: HashMap<Option<&'a str>, usize>,
    /// How each number is shown.
    names: Vec<String>,
    /// The number shared by the values written but never tested, once needed.
    untested: Option<usize>,
}

impl<'a> Values<'a> {
    /// Numbers `None` (0) and the values `ops` test the register against.
    fn new(ops: &[&'a Op]) -> Self {
        let mut values = Values {
            ids: HashMap::new(),
            names: Vec::new(),
            untested: None,
        };
        values.intern(None);
        for op in ops {
            match &op.kind {
                Kind::Read { seen } if op.complete.is_some() => values.intern(seen.as_deref()),
                Kind::Cas { expect, .. } => values.intern(expect.as_deref()),
                _ => {}
            }
        }
        values
    }

    fn intern(&mut self, value: Option<&'a str>) {
        self.ids.entry(value).or_insert_with(|| {
            self.names.push(show(value));
            self.names.len() - 1
        });
    }

    /// The number of a value tested against (one [`Values::new`] numbered).
    fn tested(&self, value: Option<&str>) -> usize {
        self.ids[&value]
    }

    /// The number of a value written.
    fn written(&mut self, value: &str) -> usize {
        if let Some(&id) = self.ids.get(&Some(value)) {
            return id;
        }
        *self.untested.get_or_insert_with(|| {
            self.names.push("a value nothing reads".to_owned());
            self.names.len() - 1
        })
    }

    fn show(&self, id: usize) -> &str {
        &self.names[id]
    }
}

/// What an operation does to the register, on value numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Effect {
    /// Fits when the register holds the value; changes nothing.
    Read(usize),
    /// Always fits; sets the value.
    Write(usize),
    /// Fits when the register holds `expect`; sets `value`.
    Cas { expect: usize, value: usize },
    /// Fits when the register holds anything but `expect`; changes nothing.
    CasFailed { expect: usize },
}

impl Effect {
    /// The register's value after the operation, or `None` if it cannot happen on
    /// `state`.
    fn apply(self, state: usize) -> Option<usize> {
        match self {
            Effect::Read(seen) => (state == seen).then_some(state),
            Effect::Write(value) => Some(value),
            Effect::Cas { expect, value } => (state == expect).then_some(value),
            Effect::CasFailed { expect } => (state != expect).then_some(state),
        }
    }
}

/// An operation as the search sees it.
struct Call {
    /// Its index in the key's sub-history.
    source: usize,
    invoke: u64,
    /// Its completion; `u64::MAX` when not `required`.
    complete: u64,
    /// Whether it completed, so must be linearized.
    required: bool,
    effect: Effect,
}

/// A set of small integers, that keeps track of its leading all-ones words and of its
/// trailing all-zeros words (sets of linearized operations are mostly a long prefix of
/// the history, then a few operations past it).
struct Bits {
    words: Vec<u64>,
    /// How many leading words are all ones.
    full: usize,
    /// How many words there are up to the last non-zero one.
    used: usize,
}

impl Bits {
    fn new(len: usize) -> Self {
        Bits {
            words: vec![0; len.div_ceil(64)],
            full: 0,
            used: 0,
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn insert(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.used = self.used.max(w + 1);
        while self.words.get(self.full) == Some(&u64::MAX) {
            self.full += 1;
        }
    }

    fn remove(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        self.full = self.full.min(w);
        while self.used > 0 && self.words[self.used - 1] == 0 {
            self.used -= 1;
        }
    }

    /// The smallest integer at least `from` not in the set (possibly past the length
    /// the set was made for).
    fn next_absent(&self, from: usize) -> usize {
        let from = from.max(self.full * 64);
        let mut w = from / 64;
        let Some(&first) = self.words.get(w) else {
            return from;
        };
        let mut absent = !first & (u64::MAX << (from % 64));
        loop {
            if absent != 0 {
                return w * 64 + absent.trailing_zeros() as usize;
            }
            w += 1;
            match self.words.get(w) {
                Some(&word) => absent = !word,
                None => return w * 64,
            }
        }
    }

    /// The set, compactly and exactly: the words between the leading all-ones ones
    /// (counted) and the trailing all-zeros ones (left out).
    fn compact(&self) -> (usize, Box<[u64]>) {
        let start = self.full.min(self.used);
        (start, self.words[start..self.used].into())
    }
}

/// A configuration of the search, as memoised: the linearized required calls (in
/// compact form), the linearized optional calls, the register's value, and whether
/// the last call linearized is optional (which restricts the next one).
type MemoKey = ((usize, Box<[u64]>), OptionalKey, usize, bool);

/// The linearized optional calls, as memoised. As those linearized are the first ones
/// of their class, counting them per class says which they are: with few classes
/// (typical when values repeat) that is shorter than a bit per call.
#[derive(PartialEq, Eq, Hash)]
enum OptionalKey {
    /// How many of each class.
    Counts(Box<[u32]>),
    /// Which ones, in compact form.
    Bits(usize, Box<[u64]>),
}

/// How a key's search ended.
enum Outcome {
    Linearizable,
    /// Out of budget; the longest linearizable prefix found (indices into the calls).
    GaveUp {
        steps: usize,
        longest: Vec<usize>,
    },
    /// No linearization; the longest linearizable prefix found (indices into the calls).
    Stuck {
        longest: Vec<usize>,
    },
}

/// One level of the search: the register's value at that point, and where to look
/// for the next operation to try.
struct Frame {
    state: usize,
    /// The next position in `Placed::required` to try here.
    next_required: usize,
    /// The next class in `Placed::classes` to try here (once the required calls are
    /// exhausted).
    next_class: usize,
    /// The earliest completion among the required calls not yet linearized: calls
    /// invoked after it are not minimal.
    bound: u64,
    /// Whether the call just linearized is optional: then the next one must test the
    /// value it left (not be a write).
    after_optional: bool,
}

/// Which calls are linearized, arranged so that the next candidate and the bound are
/// found without going through every call.
///
/// Optional calls (no reply) with the same effect are interchangeable: along a path of
/// the search the bound only grows, so an optional call that may come next at some
/// point may come at any later point too, and two such calls doing the same thing can
/// swap places in any linearization. So of each class of optional calls with the same
/// effect, only the earliest-invoked one not yet linearized is ever tried: those
/// linearized are always the first ones of their class.
struct Placed<'c> {
    calls: &'c [Call],
    /// The required (completed) calls, by invocation, and which are linearized.
    required: Vec<usize>,
    required_done: Bits,
    /// Positions in `required`, by completion, and which are linearized.
    by_completion: Vec<usize>,
    by_completion_done: Bits,
    /// For each position in `required`, its rank in `by_completion`.
    rank: Vec<usize>,
    /// How many required calls are linearized.
    required_count: usize,
    /// The optional calls, by invocation, and which are linearized.
    optional: Vec<usize>,
    optional_done: Bits,
    /// Positions in `optional` with the same effect, by invocation, and how many of
    /// each class are linearized.
    classes: Vec<Vec<usize>>,
    class_done: Vec<u32>,
    /// Whether to memoise the optional calls linearized by counts per class.
    memo_counts: bool,
    /// For each call, its position in `required` or `optional`.
    slot: Vec<usize>,
    /// For each position in `optional`, its class.
    class_of: Vec<usize>,
}

impl<'c> Placed<'c> {
    /// `memo_counts`: whether to memoise the optional calls linearized as
    /// [`OptionalKey::Counts`] or as [`OptionalKey::Bits`] (the verdict is the same
    /// either way); `None`: whichever is shorter for these calls.
    fn new(calls: &'c [Call], memo_counts: Option<bool>) -> Self {
        let (required, optional): (Vec<usize>, Vec<usize>) =
            (0..calls.len()).partition(|&i| calls[i].required);
        let mut slot = vec![0; calls.len()];
        for list in [&required, &optional] {
            for (position, &i) in list.iter().enumerate() {
                slot[i] = position;
            }
        }
        let mut by_completion: Vec<usize> = (0..required.len()).collect();
        by_completion.sort_by_key(|&p| calls[required[p]].complete);
        let mut rank = vec![0; required.len()];
        for (r, &p) in by_completion.iter().enumerate() {
            rank[p] = r;
        }
        let mut class_ids: HashMap<Effect, usize> = HashMap::new();
        let mut classes: Vec<Vec<usize>> = Vec::new();
        let mut class_of = Vec::with_capacity(optional.len());
        for (position, &i) in optional.iter().enumerate() {
            let class = *class_ids.entry(calls[i].effect).or_insert_with(|| {
                classes.push(Vec::new());
                classes.len() - 1
            });
            classes[class].push(position);
            class_of.push(class);
        }
        Placed {
            calls,
            required_done: Bits::new(required.len()),
            by_completion_done: Bits::new(required.len()),
            by_completion,
            rank,
            required_count: 0,
            optional_done: Bits::new(optional.len()),
            class_done: vec![0; classes.len()],
            memo_counts: memo_counts.unwrap_or(classes.len() * 32 <= optional.len()),
            classes,
            required,
            optional,
            slot,
            class_of,
        }
    }

    fn all_required_done(&self) -> bool {
        self.required_count == self.required.len()
    }

    fn contains(&self, i: usize) -> bool {
        if self.calls[i].required {
            self.required_done.contains(self.slot[i])
        } else {
            self.optional_done.contains(self.slot[i])
        }
    }

    fn insert(&mut self, i: usize) {
        let position = self.slot[i];
        if self.calls[i].required {
            self.required_done.insert(position);
            self.by_completion_done.insert(self.rank[position]);
            self.required_count += 1;
        } else {
            self.optional_done.insert(position);
            self.class_done[self.class_of[position]] += 1;
        }
    }

    /// Undoes the last [`Placed::insert`] of `i`.
    fn remove(&mut self, i: usize) {
        let position = self.slot[i];
        if self.calls[i].required {
            self.required_done.remove(position);
            self.by_completion_done.remove(self.rank[position]);
            self.required_count -= 1;
        } else {
            self.optional_done.remove(position);
            self.class_done[self.class_of[position]] -= 1;
        }
    }

    /// The required call left that completed first.
    fn earliest_left(&self) -> Option<usize> {
        let rank = self.by_completion_done.next_absent(0);
        self.by_completion.get(rank).map(|&p| self.required[p])
    }

    /// A fresh search level on `state`, reached by linearizing an optional call or not.
    fn frame(&self, state: usize, after_optional: bool) -> Frame {
        Frame {
            state,
            next_required: 0,
            next_class: 0,
            bound: self
                .earliest_left()
                .map_or(u64::MAX, |i| self.calls[i].complete),
            after_optional,
        }
    }

    /// The next minimal call left to try at `frame`, or `None` once all were tried.
    /// Required calls come first (calls without reply most often never took effect).
    fn next_candidate(&self, frame: &mut Frame) -> Option<usize> {
        // A write right after an optional call would make that call pointless.
        let skip =
            |i: usize| frame.after_optional && matches!(self.calls[i].effect, Effect::Write(_));
        loop {
            let p = self.required_done.next_absent(frame.next_required);
            match self.required.get(p) {
                Some(&i) if self.calls[i].invoke <= frame.bound => {
                    frame.next_required = p + 1;
                    if !skip(i) {
                        return Some(i);
                    }
                }
                // Invoked after the bound, as are all the calls after it: not minimal.
                _ => break,
            }
        }
        frame.next_required = self.required.len();
        while let Some(class) = self.classes.get(frame.next_class) {
            let done = self.class_done[frame.next_class] as usize;
            frame.next_class += 1;
            if let Some(&p) = class.get(done)
                && self.calls[self.optional[p]].invoke <= frame.bound
                && !skip(self.optional[p])
            {
                return Some(self.optional[p]);
            }
        }
        None
    }

    fn memo_key(&self, state: usize, after_optional: bool) -> MemoKey {
        let optional = if self.memo_counts {
            OptionalKey::Counts(self.class_done.as_slice().into())
        } else {
            let (full, words) = self.optional_done.compact();
            OptionalKey::Bits(full, words)
        };
        (
            self.required_done.compact(),
            optional,
            state,
            after_optional,
        )
    }
}

/// The WGL search over one key's calls (sorted by invocation), from the absent value.
/// (`memo_counts`: as for [`Placed::new`].)
fn search(calls: &[Call], max_steps: usize, memo_counts: Option<bool>) -> Outcome {
    let mut placed = Placed::new(calls, memo_counts);
    if placed.all_required_done() {
        return Outcome::Linearizable;
    }
    // Configurations already reached.
    let mut seen: HashSet<MemoKey> = HashSet::new();
    // The calls linearized so far, in order; `stack` has one more frame than `path`.
    let mut path: Vec<usize> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut stack = vec![placed.frame(0, false)];
    let mut steps = 0;
    while let Some(frame) = stack.last_mut() {
        // The next minimal call that fits the register and leads somewhere new.
        let mut next = None;
        while let Some(i) = placed.next_candidate(frame) {
            if steps == max_steps {
                if path.len() > longest.len() {
                    longest = path;
                }
                return Outcome::GaveUp { steps, longest };
            }
            steps += 1;
            let Some(state) = calls[i].effect.apply(frame.state) else {
                continue;
            };
            if !calls[i].required && state == frame.state {
                continue; // an optional call that changes nothing is as good left out
            }
            placed.insert(i);
            if seen.insert(placed.memo_key(state, !calls[i].required)) {
                next = Some((i, state));
                break;
            }
            placed.remove(i);
        }
        match next {
            Some((i, state)) => {
                path.push(i);
                if placed.all_required_done() {
                    return Outcome::Linearizable;
                }
                stack.push(placed.frame(state, !calls[i].required));
            }
            None => {
                // Nothing fits here: undo the choice that led here. (The path is
                // longest just before backtracking, so that is where to keep it.)
                if path.len() > longest.len() {
                    longest.clone_from(&path);
                }
                stack.pop();
                if let Some(i) = path.pop() {
                    placed.remove(i);
                }
            }
        }
    }
    Outcome::Stuck { longest }
}

/// At most this many lines per list in a report.
const REPORT_LINES: usize = 30;

/// One key's sub-history, sorted by invocation, as the search sees it.
fn compile<'a>(ops: &[&'a Op]) -> (Values<'a>, Vec<Call>) {
    let mut values = Values::new(ops);
    let calls = ops
        .iter()
        .enumerate()
        .filter_map(|(source, op)| {
            let required = op.complete.is_some();
            let effect = match &op.kind {
                Kind::Read { .. } if !required => return None, // tells nothing
                Kind::Read { seen } => Effect::Read(values.tested(seen.as_deref())),
                Kind::Write { value } => Effect::Write(values.written(value)),
                Kind::Cas { expect, ok, .. } if required && !ok => Effect::CasFailed {
                    expect: values.tested(expect.as_deref()),
                },
                // Succeeded, or no reply: if it took effect, it succeeded (a failed
                // compare-and-set without reply is the same as one never applied).
                Kind::Cas { expect, value, .. } => Effect::Cas {
                    expect: values.tested(expect.as_deref()),
                    value: values.written(value),
                },
            };
            Some(Call {
                source,
                invoke: op.invoke,
                complete: op.complete.unwrap_or(u64::MAX),
                required,
                effect,
            })
        })
        .collect();
    (values, calls)
}

/// Checks one key's sub-history, `ops` sorted by invocation.
fn check_key(key: &str, ops: &[&Op], max_steps: usize) -> Result<(), Violation> {
    let (values, calls) = compile(ops);

    // A completed call that needs a value no call wrote (other than the initial
    // absent) can go nowhere: say so without searching.
    let written: HashSet<usize> = calls
        .iter()
        .filter_map(|call| match call.effect {
            Effect::Write(value) | Effect::Cas { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let impossible: Vec<&Call> = calls
        .iter()
        .filter(|call| {
            call.required
                && match call.effect {
                    Effect::Read(value) | Effect::Cas { expect: value, .. } => {
                        value != 0 && !written.contains(&value)
                    }
                    _ => false,
                }
        })
        .collect();
    if !impossible.is_empty() {
        let mut lines = vec![format!(
            "completed operations that need a value no operation on this key wrote ({}):",
            impossible.len()
        )];
        for call in impossible.iter().take(REPORT_LINES) {
            lines.push(format!("  - {}", ops[call.source]));
        }
        if impossible.len() > REPORT_LINES {
            lines.push(format!("  ... {} more", impossible.len() - REPORT_LINES));
        }
        return Err(Violation::NotLinearizable {
            key: key.to_owned(),
            ops: ops.iter().copied().cloned().collect(),
            explanation: lines.join("\n"),
        });
    }

    match search(&calls, max_steps, None) {
        Outcome::Linearizable => Ok(()),
        Outcome::GaveUp { steps, longest } => Err(Violation::GaveUp {
            key: key.to_owned(),
            ops: ops.len(),
            steps,
            explanation: explain(ops, &calls, &values, &longest, false),
        }),
        Outcome::Stuck { longest } => Err(Violation::NotLinearizable {
            key: key.to_owned(),
            ops: ops.iter().copied().cloned().collect(),
            explanation: explain(ops, &calls, &values, &longest, true),
        }),
    }
}

/// Describes where the search got: the longest linearizable prefix found; then, if it
/// got `stuck` (rather than gave up), the minimal operations after that prefix and why
/// none fits, and the completed operations never placed.
fn explain(
    ops: &[&Op],
    calls: &[Call],
    values: &Values<'_>,
    longest: &[usize],
    stuck: bool,
) -> String {
    let mut lines = Vec::new();
    let mut placed = Placed::new(calls, None);
    let mut state = 0;
    // The register's actual value (`state` may be the number shared by untested ones).
    let mut holds = show(None);
    let required_in_prefix = longest.iter().filter(|&&i| calls[i].required).count();
    lines.push(format!(
        "longest linearizable prefix found: {} ops ({required_in_prefix} of the {} completed ones){}",
        longest.len(),
        placed.required.len(),
        if longest.is_empty() { "" } else { ":" }
    ));
    let skipped = longest.len().saturating_sub(REPORT_LINES);
    if skipped > 0 {
        lines.push(format!("  ... {skipped} earlier ops"));
    }
    for (n, &i) in longest.iter().enumerate() {
        let op = ops[calls[i].source];
        let after = calls[i]
            .effect
            .apply(state)
            .expect("the prefix found by the search replays");
        // A write, or a compare-and-set that succeeded: show the value it wrote.
        if matches!(calls[i].effect, Effect::Write(_) | Effect::Cas { .. })
            && let Kind::Write { value } | Kind::Cas { value, .. } = &op.kind
        {
            holds = show(Some(value));
        }
        state = after;
        placed.insert(i);
        if n >= skipped {
            lines.push(format!("  {:>4}. {op}  => {holds}", n + 1));
        }
    }

    if !stuck {
        lines.push(format!(
            "then the register holds {holds}; the search had not ruled out every order yet"
        ));
        if let Some(first) = placed.earliest_left() {
            lines.push(format!(
                "  (the completed operation left that completed first: {})",
                ops[calls[first].source]
            ));
        }
        return lines.join("\n");
    }
    lines.push(format!(
        "then the register holds {holds}, and no operation that may come next fits:"
    ));
    if let Some(first) = placed.earliest_left() {
        lines.push(format!(
            "  (what comes next must have been invoked by {}ns, when this completed: {})",
            calls[first].complete, ops[calls[first].source]
        ));
    }
    let mut frame = placed.frame(state, false);
    let mut candidates = Vec::new();
    while let Some(i) = placed.next_candidate(&mut frame) {
        candidates.push(i);
    }
    for &i in candidates.iter().take(REPORT_LINES) {
        lines.push(format!(
            "  - {}: {}",
            ops[calls[i].source],
            why_not(&calls[i], state, &holds, values)
        ));
    }
    if candidates.len() > REPORT_LINES {
        lines.push(format!("  ... {} more", candidates.len() - REPORT_LINES));
    }

    let unplaced: Vec<usize> = placed
        .required
        .iter()
        .copied()
        .filter(|&i| !placed.contains(i))
        .collect();
    lines.push(format!(
        "completed operations never placed ({}):",
        unplaced.len()
    ));
    for &i in unplaced.iter().take(REPORT_LINES) {
        lines.push(format!("  - {}", ops[calls[i].source]));
    }
    if unplaced.len() > REPORT_LINES {
        lines.push(format!("  ... {} more", unplaced.len() - REPORT_LINES));
    }
    lines.join("\n")
}

/// Why `call` cannot come next when the register holds `state` (shown as `holds`).
fn why_not(call: &Call, state: usize, holds: &str, values: &Values<'_>) -> String {
    let optional = if call.required {
        ""
    } else {
        " (no reply: it may also never have happened)"
    };
    let reason = match call.effect {
        Effect::Read(seen) if seen != state => format!(
            "it returned {}, but the register holds {holds}",
            values.show(seen)
        ),
        Effect::Cas { expect, .. } if expect != state => format!(
            "it needs {}, but the register holds {holds}",
            values.show(expect)
        ),
        Effect::CasFailed { expect } if expect == state => {
            format!("it failed, but the register holds its expected value {holds}")
        }
        _ => "it fits here, but no order of the remaining operations works after it".to_owned(),
    };
    format!("{reason}{optional}")
}

/// Records a history from concurrent clients, for [`check`].
///
/// Clones share the history. Call `invoke_*` just *before* sending a request and the
/// matching `complete_*` just *after* its reply arrives, so that each recorded interval
/// contains the real one; a call never completed (timed out, connection lost) stays
/// without reply. Nothing here awaits or blocks for long (a std mutex held for a push),
/// so it is fine to use from async tasks.
///
/// ```
/// use polycall_test_support::linearizability::Recorder;
///
/// let recorder = Recorder::new();
/// let w = recorder.invoke_write(0, "k", "v");
/// recorder.complete_write(w);
/// let r = recorder.invoke_read(1, "k");
/// recorder.complete_read(r, Some("v".to_owned()));
/// let lost = recorder.invoke_write(2, "k", "w"); // timed out: outcome unknown
/// assert_eq!(recorder.history()[lost].complete, None);
/// recorder.check().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    /// The operations by id; `None` once forgotten.
    ops: Arc<Mutex<Vec<Option<Op>>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history, its clock starting now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the start.
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The history, even if a client panicked while holding it.
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Op>>> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn invoke(&self, client: usize, key: String, kind: Kind) -> usize {
        let mut ops = self.lock();
        ops.push(Some(Op {
            client,
            key,
            kind,
            invoke: self.now(),
            complete: None,
        }));
        ops.len() - 1
    }

    /// Records that `client` is about to read `key`; returns the operation's id.
    pub fn invoke_read(&self, client: usize, key: impl Into<String>) -> usize {
        self.invoke(client, key.into(), Kind::Read { seen: None })
    }

    /// Records that `client` is about to write `value` to `key`; returns the
    /// operation's id.
    pub fn invoke_write(
        &self,
        client: usize,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> usize {
        let value = value.into();
        self.invoke(client, key.into(), Kind::Write { value })
    }

    /// Records that `client` is about to compare-and-set `key` from `expect` (`None`:
    /// absent) to `value`; returns the operation's id.
    pub fn invoke_cas(
        &self,
        client: usize,
        key: impl Into<String>,
        expect: Option<String>,
        value: impl Into<String>,
    ) -> usize {
        let value = value.into();
        let kind = Kind::Cas {
            expect,
            value,
            ok: false,
        };
        self.invoke(client, key.into(), kind)
    }

    /// Completes operation `id`, now, if `fill` (given its kind) accepts it.
    fn complete(&self, id: usize, what: &str, fill: impl FnOnce(&mut Kind) -> bool) {
        let now = self.now();
        let mut ops = self.lock();
        let Some(op) = ops.get_mut(id).and_then(Option::as_mut) else {
            panic!("no operation {id} to complete (never invoked, or forgotten)");
        };
        assert!(
            op.complete.is_none(),
            "operation {id} completed twice: {op}"
        );
        let matches = fill(&mut op.kind);
        assert!(matches, "{what} for operation {id}, which is not one: {op}");
        op.complete = Some(now.max(op.invoke));
    }

    /// Records that read `id` returned `seen` (`None`: absent).
    ///
    /// # Panics
    ///
    /// If `id` is not an uncompleted read.
    pub fn complete_read(&self, id: usize, seen: Option<String>) {
        self.complete(id, "complete_read", |kind| match kind {
            Kind::Read { seen: slot } => {
                *slot = seen;
                true
            }
            _ => false,
        });
    }

    /// Records that write `id` was acknowledged.
    ///
    /// # Panics
    ///
    /// If `id` is not an uncompleted write.
    pub fn complete_write(&self, id: usize) {
        self.complete(id, "complete_write", |kind| {
            matches!(kind, Kind::Write { .. })
        });
    }

    /// Records that compare-and-set `id` replied, successfully or not.
    ///
    /// # Panics
    ///
    /// If `id` is not an uncompleted compare-and-set.
    pub fn complete_cas(&self, id: usize, ok: bool) {
        self.complete(id, "complete_cas", |kind| match kind {
            Kind::Cas { ok: slot, .. } => {
                *slot = ok;
                true
            }
            _ => false,
        });
    }

    /// Drops operation `id` from the history: for a call known to have had no effect
    /// (say, refused before it was sent). A call that merely got no reply must stay.
    pub fn forget(&self, id: usize) {
        if let Some(slot) = self.lock().get_mut(id) {
            *slot = None;
        }
    }

    /// The history so far (forgotten operations left out, so ids are not indices once
    /// something was forgotten).
    pub fn history(&self) -> Vec<Op> {
        self.lock().iter().flatten().cloned().collect()
    }

    /// [`check`] on the history so far.
    pub fn check(&self) -> Result<(), Violation> {
        check(&self.history())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, key: &str, kind: Kind, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: key.to_owned(),
            kind,
            invoke,
            complete: Some(complete),
        }
    }

    fn read(client: usize, key: &str, seen: Option<&str>, invoke: u64, complete: u64) -> Op {
        let seen = seen.map(str::to_owned);
        op(client, key, Kind::Read { seen }, invoke, complete)
    }

    fn write(client: usize, key: &str, value: &str, invoke: u64, complete: u64) -> Op {
        let value = value.to_owned();
        op(client, key, Kind::Write { value }, invoke, complete)
    }

    fn cas(
        client: usize,
        key: &str,
        expect: Option<&str>,
        value: &str,
        ok: bool,
        invoke: u64,
        complete: u64,
    ) -> Op {
        let kind = Kind::Cas {
            expect: expect.map(str::to_owned),
            value: value.to_owned(),
            ok,
        };
        op(client, key, kind, invoke, complete)
    }

    /// The same operation, without a reply.
    fn lost(mut op: Op) -> Op {
        op.complete = None;
        op
    }

    #[track_caller]
    fn assert_violation(history: &[Op], key: &str) -> String {
        match check(history) {
            Err(violation @ Violation::NotLinearizable { .. }) => {
                assert_eq!(violation.key(), key, "{violation}");
                violation.to_string()
            }
            other => panic!("expected a violation on {key:?}, got {other:?}"),
        }
    }

    #[test]
    fn sequential_write_then_read() {
        let history = [
            read(0, "a", None, 0, 5),
            write(0, "a", "1", 10, 20),
            read(1, "a", Some("1"), 30, 40),
        ];
        assert_eq!(check(&history), Ok(()));
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn stale_read_after_a_completed_write() {
        let history = [write(0, "a", "1", 0, 10), read(1, "a", None, 20, 30)];
        let message = assert_violation(&history, "a");
        assert!(message.contains("client 1 read \"a\" -> absent [20ns..30ns]"));
        assert!(message.contains("it returned absent, but the register holds \"1\""));
        // Reading before the write completed was fine, even at its completion instant.
        let history = [write(0, "a", "1", 0, 10), read(1, "a", None, 10, 30)];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn a_read_concurrent_with_a_write_sees_either_value() {
        for seen in [None, Some("1")] {
            let history = [write(0, "a", "1", 0, 100), read(1, "a", seen, 10, 20)];
            assert_eq!(check(&history), Ok(()), "seen {seen:?}");
        }
        for seen in [Some("0"), Some("1")] {
            let history = [
                write(0, "a", "0", 0, 5),
                write(0, "a", "1", 10, 100),
                read(1, "a", seen, 20, 30),
            ];
            assert_eq!(check(&history), Ok(()), "seen {seen:?}");
        }
        // But not the value before the last completed write.
        let history = [
            write(0, "a", "0", 0, 5),
            write(0, "a", "1", 10, 100),
            read(1, "a", None, 20, 30),
        ];
        assert_violation(&history, "a");
    }

    #[test]
    fn the_search_backtracks() {
        // Write "x" was invoked first, but must be linearized after write "y" for the
        // read to see "x"; a greedy first pick (write "x", then "y") fails.
        let history = [
            write(0, "a", "x", 0, 100),
            write(1, "a", "y", 10, 20),
            read(2, "a", Some("x"), 110, 120),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn a_long_write_concurrent_with_many_operations() {
        // The long write must come last, which the search finds only after trying it
        // at every earlier place: it backtracks over hundreds of operations.
        let mut history = vec![write(0, "a", "long", 0, 10_000)];
        for i in 0..300 {
            let t = 10 + 20 * i;
            history.push(write(1, "a", &i.to_string(), t, t + 5));
            history.push(read(2, "a", Some(&i.to_string()), t + 10, t + 15));
        }
        history.push(read(3, "a", Some("long"), 20_000, 20_010));
        assert_eq!(check(&history), Ok(()));
        // Read once more, the last short write's value cannot come back.
        history.push(read(3, "a", Some("299"), 20_020, 20_030));
        assert_violation(&history, "a");
    }

    #[test]
    fn reads_after_both_writes_cannot_go_back() {
        let writes = [write(0, "a", "a", 0, 10), write(1, "a", "b", 0, 10)];
        // Both writes completed before both reads: the value is final.
        let mut history = writes.to_vec();
        history.push(read(2, "a", Some("a"), 20, 30));
        history.push(read(3, "a", Some("b"), 40, 50));
        assert_violation(&history, "a");
        let mut history = writes.to_vec();
        history.push(read(2, "a", Some("b"), 20, 30));
        history.push(read(3, "a", Some("a"), 40, 50));
        assert_violation(&history, "a");
        for last in ["a", "b"] {
            let mut history = writes.to_vec();
            history.push(read(2, "a", Some(last), 20, 30));
            history.push(read(3, "a", Some(last), 40, 50));
            assert_eq!(check(&history), Ok(()), "{last}");
        }
        // While the writes are in flight, "a" then "b" is fine, "b" then "a" too.
        let writes = [write(0, "a", "a", 0, 100), write(1, "a", "b", 0, 100)];
        for (first, second) in [("a", "b"), ("b", "a")] {
            let mut history = writes.to_vec();
            history.push(read(2, "a", Some(first), 20, 30));
            history.push(read(3, "a", Some(second), 40, 50));
            assert_eq!(check(&history), Ok(()), "{first} {second}");
        }
        // But not "a", "b", "a": each write happens once.
        let mut history = writes.to_vec();
        history.push(read(2, "a", Some("a"), 20, 30));
        history.push(read(3, "a", Some("b"), 40, 50));
        history.push(read(2, "a", Some("a"), 60, 70));
        assert_violation(&history, "a");
    }

    #[test]
    fn operations_without_reply() {
        let maybe = lost(write(0, "a", "x", 0, 0));
        // Observed later: it took effect.
        let history = [maybe.clone(), read(1, "a", Some("x"), 50, 60)];
        assert_eq!(check(&history), Ok(()));
        // Never observed: it may never have happened.
        let history = [maybe.clone(), read(1, "a", None, 50, 60)];
        assert_eq!(check(&history), Ok(()));
        assert_eq!(check(std::slice::from_ref(&maybe)), Ok(()));
        // Observed, then gone although nothing else wrote: it cannot be undone.
        let history = [
            maybe.clone(),
            read(1, "a", Some("x"), 50, 60),
            read(1, "a", None, 70, 80),
        ];
        assert_violation(&history, "a");
        // Observed before it was invoked.
        let history = [
            lost(write(0, "a", "x", 100, 0)),
            read(1, "a", Some("x"), 10, 20),
        ];
        assert_violation(&history, "a");
        // Taking effect long after it was invoked, after other operations completed.
        let history = [
            maybe,
            write(1, "a", "y", 10, 20),
            read(2, "a", Some("y"), 30, 40),
            read(2, "a", Some("x"), 50, 60),
        ];
        assert_eq!(check(&history), Ok(()));
        // A read without reply says nothing, whatever its (meaningless) value.
        let history = [
            write(0, "a", "1", 0, 10),
            lost(read(1, "a", Some("junk"), 20, 0)),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn compare_and_set() {
        // Two concurrent CASes from absent cannot both succeed.
        let history = [
            cas(0, "a", None, "x", true, 0, 10),
            cas(1, "a", None, "y", true, 0, 10),
        ];
        let message = assert_violation(&history, "a");
        assert!(
            message.contains("cas \"a\" absent -> \"y\": ok"),
            "{message}"
        );
        // One succeeds, the other fails.
        let history = [
            cas(0, "a", None, "x", true, 0, 10),
            cas(1, "a", None, "y", false, 0, 10),
            read(2, "a", Some("x"), 20, 30),
        ];
        assert_eq!(check(&history), Ok(()));
        // The loser's value cannot show up.
        let history = [
            cas(0, "a", None, "x", true, 0, 10),
            cas(1, "a", None, "y", false, 0, 10),
            read(2, "a", Some("y"), 20, 30),
        ];
        assert_violation(&history, "a");
        // A failed CAS whose expectation held, with nothing concurrent.
        let history = [
            write(0, "a", "x", 0, 10),
            cas(1, "a", Some("x"), "y", false, 20, 30),
        ];
        assert_violation(&history, "a");
        // A CAS without reply took effect (its `ok` is ignored) ...
        let history = [
            write(0, "a", "x", 0, 10),
            lost(cas(1, "a", Some("x"), "y", false, 20, 0)),
            read(2, "a", Some("y"), 30, 40),
        ];
        assert_eq!(check(&history), Ok(()));
        // ... but only if its expectation could hold.
        let history = [
            write(0, "a", "z", 0, 10),
            lost(cas(1, "a", None, "y", true, 20, 0)),
            read(2, "a", Some("y"), 30, 40),
        ];
        assert_violation(&history, "a");
    }

    #[test]
    fn keys_are_independent() {
        let history = [
            write(0, "a", "1", 0, 10),
            write(1, "b", "1", 0, 10),
            read(2, "a", Some("1"), 20, 30),
            read(3, "b", None, 20, 30),
            read(4, "c", None, 20, 30),
        ];
        let message = assert_violation(&history, "b");
        assert!(message.contains("key \"b\""), "{message}");
        // Key "a" alone was fine, and a value of "a" does not leak into "b".
        assert_eq!(check(&history[..3]), Ok(()));
        let history = [write(0, "a", "1", 0, 10), read(1, "b", Some("1"), 20, 30)];
        assert_violation(&history, "b");
    }

    /// A deterministic pseudo-random sequence (Knuth's MMIX LCG).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Applies `op` to `store` atomically, filling in its result.
    fn apply(store: &mut HashMap<String, Option<String>>, op: &mut Op) {
        let current = store.entry(op.key.clone()).or_default();
        match &mut op.kind {
            Kind::Read { seen } => seen.clone_from(current),
            Kind::Write { value } => *current = Some(value.clone()),
            Kind::Cas { expect, value, ok } => {
                *ok = current == expect;
                if *ok {
                    *current = Some(value.clone());
                }
            }
        }
    }

    /// A history of `n_ops` calls by 5 clients on 3 keys against a real (sequential)
    /// store, each call taking effect at some instant between its invocation and its
    /// completion; a few calls get no reply (some of those take effect late, some
    /// never).
    fn simulated_history(seed: u64, n_ops: usize) -> Vec<Op> {
        enum Client {
            Idle,
            Invoked(Op),
            Applied(Op),
        }
        const CLIENTS: usize = 5;
        const KEYS: [&str; 3] = ["a", "b", "c"];
        let random_value = |rng: &mut Lcg| rng.below(4).to_string();

        let mut rng = Lcg(seed);
        let mut store = HashMap::new();
        let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::Idle).collect();
        let mut limbo: Vec<Op> = Vec::new(); // no reply, not applied (yet)
        let mut history = Vec::new();
        let mut started = 0;
        let mut t = 0;
        while started < n_ops || clients.iter().any(|c| !matches!(c, Client::Idle)) {
            t += 1 + rng.below(3);
            if !limbo.is_empty() && rng.below(8) == 0 {
                let mut op = limbo.swap_remove(rng.below(limbo.len() as u64) as usize);
                if rng.below(2) == 0 {
                    apply(&mut store, &mut op); // late, after the client gave up
                }
                history.push(op);
            }
            let c = rng.below(CLIENTS as u64) as usize;
            clients[c] = match std::mem::replace(&mut clients[c], Client::Idle) {
                Client::Idle if started < n_ops => {
                    started += 1;
                    let key = KEYS[rng.below(3) as usize];
                    let kind = match rng.below(20) {
                        0..8 => Kind::Read { seen: None },
                        8..15 => Kind::Write {
                            value: random_value(&mut rng),
                        },
                        _ => Kind::Cas {
                            expect: (rng.below(5) != 0).then(|| random_value(&mut rng)),
                            value: random_value(&mut rng),
                            ok: false,
                        },
                    };
                    Client::Invoked(Op {
                        client: c,
                        key: key.to_owned(),
                        kind,
                        invoke: t,
                        complete: None,
                    })
                }
                Client::Idle => Client::Idle,
                Client::Invoked(op) if rng.below(25) == 0 => {
                    limbo.push(op); // the client times out and moves on
                    Client::Idle
                }
                Client::Invoked(mut op) => {
                    apply(&mut store, &mut op);
                    Client::Applied(op)
                }
                Client::Applied(mut op) => {
                    // Applied, but the reply may be lost.
                    op.complete = (rng.below(30) != 0).then_some(t);
                    history.push(op);
                    Client::Idle
                }
            };
        }
        history.append(&mut limbo); // never took effect
        history
    }

    #[test]
    fn simulated_histories() {
        for seed in 0..5 {
            let mut history = simulated_history(seed, 200);
            assert_eq!(history.len(), 200);
            assert!(
                history.iter().any(|op| op.complete.is_none()),
                "seed {seed}"
            );
            if let Err(violation) = check(&history) {
                panic!("seed {seed}: {violation}");
            }

            // Corrupt a completed read in the middle to a value never written.
            let mut reads: Vec<usize> = (0..history.len())
                .filter(|&i| {
                    matches!(history[i].kind, Kind::Read { .. }) && history[i].complete.is_some()
                })
                .collect();
            reads.sort_by_key(|&i| history[i].invoke);
            let victim = reads[reads.len() / 2];
            history[victim].kind = Kind::Read {
                seen: Some("never written".to_owned()),
            };
            let key = history[victim].key.clone();
            let message = assert_violation(&history, &key);
            assert!(message.contains("never written"), "{message}");

            // Or to a value written only after the read completed: this one takes the
            // search to refute.
            let end = history.iter().filter_map(|op| op.complete).max().unwrap();
            history[victim].kind = Kind::Read {
                seen: Some("late".to_owned()),
            };
            history.push(write(9, &key, "late", end + 10, end + 20));
            let message = assert_violation(&history, &key);
            assert!(message.contains("longest linearizable prefix"), "{message}");
        }
    }

    /// Whether `ops` (one key) is linearizable, by trying every order of every subset
    /// that holds all completed operations: slow, but too simple to be wrong.
    fn brute_force(ops: &[Op]) -> bool {
        fn extend(ops: &[Op], used: &mut [bool], state: Option<&str>) -> bool {
            let required_left = (0..ops.len()).any(|i| !used[i] && ops[i].complete.is_some());
            if !required_left {
                return true;
            }
            for i in 0..ops.len() {
                // Next only if no operation still left completed before it was invoked.
                let blocked = (0..ops.len())
                    .any(|j| !used[j] && ops[j].complete.is_some_and(|c| c < ops[i].invoke));
                if used[i] || blocked {
                    continue;
                }
                let replied = ops[i].complete.is_some();
                let after = match &ops[i].kind {
                    Kind::Read { seen } => (!replied || seen.as_deref() == state).then_some(state),
                    Kind::Write { value } => Some(Some(value.as_str())),
                    Kind::Cas { expect, value, ok } => {
                        let matched = expect.as_deref() == state;
                        if !replied {
                            Some(if matched { Some(value.as_str()) } else { state })
                        } else if *ok {
                            matched.then_some(Some(value.as_str()))
                        } else {
                            (!matched).then_some(state)
                        }
                    }
                };
                if let Some(after) = after {
                    used[i] = true;
                    let found = extend(ops, used, after);
                    used[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        extend(ops, &mut vec![false; ops.len()], None)
    }

    /// Whether the search finds `history` (one key) linearizable.
    fn search_alone(history: &[Op], memo_counts: bool) -> bool {
        let mut ops: Vec<&Op> = history.iter().collect();
        ops.sort_by_key(|op| op.invoke);
        let (_, calls) = compile(&ops);
        matches!(
            search(&calls, DEFAULT_MAX_STEPS, Some(memo_counts)),
            Outcome::Linearizable
        )
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Lcg(7);
        let random_value = |rng: &mut Lcg| (rng.below(4) != 0).then(|| rng.below(3).to_string());
        let mut verdicts = [0; 2];
        for case in 0..3_000 {
            let len = 1 + rng.below(8) as usize;
            let history: Vec<Op> = (0..len)
                .map(|client| {
                    let kind = match rng.below(3) {
                        0 => Kind::Read {
                            seen: random_value(&mut rng),
                        },
                        1 => Kind::Write {
                            value: rng.below(3).to_string(),
                        },
                        _ => Kind::Cas {
                            expect: random_value(&mut rng),
                            value: rng.below(3).to_string(),
                            ok: rng.below(2) == 0,
                        },
                    };
                    let invoke = rng.below(20);
                    let complete = (rng.below(3) != 0).then(|| invoke + rng.below(15));
                    Op {
                        client,
                        key: "k".to_owned(),
                        kind,
                        invoke,
                        complete,
                    }
                })
                .collect();
            let expected = brute_force(&history);
            let got = check(&history);
            assert_eq!(got.is_ok(), expected, "case {case}: {history:#?}\n{got:?}");
            // The search alone (no shortcut for values never written), whichever way
            // it memoises the calls without reply.
            for memo_counts in [true, false] {
                assert_eq!(search_alone(&history, memo_counts), expected, "case {case}");
            }
            verdicts[usize::from(expected)] += 1;
        }
        // Both verdicts were exercised, many times.
        assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
    }

    #[test]
    fn gives_up_past_the_budget() {
        // Many concurrent writes, then a read of a value only written after it
        // completed: proving that takes going through every subset of the writes.
        let hard = |writes: usize| {
            let mut history: Vec<Op> = (0..writes)
                .map(|i| write(i, "a", &i.to_string(), 0, 100))
                .collect();
            history.push(read(writes, "a", Some("late"), 200, 210));
            history.push(write(writes, "a", "late", 300, 310));
            history
        };
        let mut history = hard(20);
        let gave_up = check_with_budget(&history, 1_000).unwrap_err();
        let message = gave_up.to_string();
        assert!(
            matches!(&gave_up, Violation::GaveUp { key, ops: 22, steps: 1_000, .. } if key == "a"),
            "{message}"
        );
        assert!(message.contains("longest linearizable prefix"), "{message}");
        // A violation on another key wins over giving up.
        history.push(write(0, "b", "1", 0, 10));
        history.push(read(1, "b", None, 20, 30));
        assert!(matches!(
            check_with_budget(&history, 1_000),
            Err(Violation::NotLinearizable { key, .. }) if key == "b"
        ));
        // With fewer writes, the default budget reaches the verdict.
        assert_violation(&hard(6), "a");
    }

    #[test]
    fn recorder_histories() {
        let recorder = Recorder::new();
        let w = recorder.invoke_write(0, "k", "1");
        recorder.complete_write(w);
        let gone = recorder.invoke_cas(1, "k", None, "2");
        recorder.forget(gone);
        let _lost = recorder.invoke_cas(1, "k", Some("1".to_owned()), "3");
        let history = recorder.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].complete, None);
        assert!(matches!(history[1].kind, Kind::Cas { .. }));
        assert_eq!(recorder.check(), Ok(()));

        std::thread::sleep(std::time::Duration::from_millis(1));
        let r = recorder.invoke_read(2, "k");
        recorder.complete_read(r, None); // stale: "1" was acknowledged before
        assert!(matches!(
            recorder.check(),
            Err(Violation::NotLinearizable { key, .. }) if key == "k"
        ));
    }

    #[test]
    fn recorder_from_threads_against_a_locked_store() {
        let recorder = Recorder::new();
        let store = Arc::new(Mutex::new(HashMap::<String, Option<String>>::new()));
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let recorder = recorder.clone();
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut rng = Lcg(client as u64);
                    for n in 0..50 {
                        let key = ["x", "y"][rng.below(2) as usize];
                        let value = format!("{client}.{n}");
                        let mut op = match rng.below(3) {
                            0 => Op {
                                client,
                                key: key.to_owned(),
                                kind: Kind::Read { seen: None },
                                invoke: 0,
                                complete: None,
                            },
                            1 => write(client, key, &value, 0, 0),
                            _ => cas(client, key, None, &value, false, 0, 0),
                        };
                        let id = match &op.kind {
                            Kind::Read { .. } => recorder.invoke_read(client, key),
                            Kind::Write { value } => recorder.invoke_write(client, key, value),
                            Kind::Cas { expect, value, .. } => {
                                recorder.invoke_cas(client, key, expect.clone(), value)
                            }
                        };
                        apply(&mut store.lock().unwrap(), &mut op);
                        match op.kind {
                            Kind::Read { seen } => recorder.complete_read(id, seen),
                            Kind::Write { .. } => recorder.complete_write(id),
                            Kind::Cas { ok, .. } => recorder.complete_cas(id, ok),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(recorder.history().len(), 200);
        assert_eq!(recorder.check(), Ok(()));
    }
}
