//! The adaptive selector: which [`Choice`] delivers a message soonest.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use polycall_core::ContentType;

use super::model::{self, Prior};
use super::probe;
use super::{Algorithm, Choice, Compressor};

/// How [`AdaptiveSelector`] decides.
///
/// ```
/// use polycall_proto::compress::{Choice, SelectorConfig};
///
/// let config = SelectorConfig::default()
///     .link_bytes_per_sec(125e6) // 1 Gbit/s
///     .candidates([Choice::zstd(1), Choice::zstd(3)]);
/// assert_eq!(config.min_size, SelectorConfig::default().min_size);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SelectorConfig {
    /// Payloads shorter than this many bytes are always sent as they are.
    pub min_size: usize,
    /// The ways to compress that are considered (besides not compressing).
    /// Duplicates, [`Choice::NONE`] and levels the encoder does not accept
    /// are ignored; none at all means never compress.
    pub candidates: Vec<Choice>,
    /// The link's throughput, in bytes per second, until
    /// [`AdaptiveSelector::set_link_throughput`] says otherwise.
    pub link_bytes_per_sec: f64,
    /// Every this many messages of a key (of at least `min_size` bytes), the
    /// selector tries a near-competitive alternative instead of its favourite,
    /// so that its estimates stay current. 0 turns exploration off.
    pub explore_every: u32,
    /// How near is near-competitive: an alternative whose estimated delivery
    /// time is within this fraction of the best one's.
    pub explore_margin: f64,
    /// The most keys the selector keeps estimates for; the least recently
    /// used one is forgotten to make room for a new one.
    pub max_keys: usize,
    /// How fast estimates follow new observations: the weight of the newest
    /// one in the moving averages (the first few are averaged plainly).
    pub learning_rate: f64,
}

impl Default for SelectorConfig {
    /// zstd at levels 1, 3 and 7 and brotli at 4 and 6 (those built in), for a 100 Mbit/s
    /// link, not compressing under 256 bytes, exploring every 16th message.
    fn default() -> Self {
        SelectorConfig {
            min_size: 256,
            candidates: [
                Choice::zstd(1),
                Choice::zstd(3),
                Choice::zstd(7),
                Choice::brotli(4),
                Choice::brotli(6),
            ]
            .into_iter()
            .filter(|c| c.algorithm.is_built())
            .collect(),
            link_bytes_per_sec: 12.5e6,
            explore_every: 16,
            explore_margin: 0.1,
            max_keys: 1024,
            learning_rate: 0.2,
        }
    }
}

impl SelectorConfig {
    /// Sets the size in bytes under which payloads are always sent as they are.
    pub fn min_size(mut self, min_size: usize) -> Self {
        self.min_size = min_size;
        self
    }

    /// Sets the ways to compress that are considered (besides not compressing).
    pub fn candidates(mut self, candidates: impl IntoIterator<Item = Choice>) -> Self {
        self.candidates = candidates.into_iter().collect();
        self
    }

    /// Sets the link's throughput, in bytes per second, until
    /// [`AdaptiveSelector::set_link_throughput`] says otherwise.
    pub fn link_bytes_per_sec(mut self, link_bytes_per_sec: f64) -> Self {
        self.link_bytes_per_sec = link_bytes_per_sec;
        self
    }

    /// Sets every how many messages of a key the selector tries a near-competitive
    /// alternative (0 turns exploration off).
    pub fn explore_every(mut self, explore_every: u32) -> Self {
        self.explore_every = explore_every;
        self
    }

    /// Sets how near is near-competitive: within this fraction of the best estimated
    /// delivery time.
    pub fn explore_margin(mut self, explore_margin: f64) -> Self {
        self.explore_margin = explore_margin;
        self
    }

    /// Sets the most keys the selector keeps estimates for.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Sets how fast estimates follow new observations: the weight of the newest one in the
    /// moving averages.
    pub fn learning_rate(mut self, learning_rate: f64) -> Self {
        self.learning_rate = learning_rate;
        self
    }
}

/// The most candidates a selector considers; the rest are ignored.
const MAX_CANDIDATES: usize = 16;

/// The shared speed model learns a correction per size class: 4x apart,
/// from under 1 KiB to 1 MiB and up. Fixed costs (zstd resets tables sized
/// to the input, brotli allocates its hasher) do not scale with the input,
/// so one correction for all sizes would not fit.
const SIZE_CLASSES: usize = 7;

/// Only messages this large train the machine-wide correction (used for size
/// classes not observed yet): per-message costs, which vary with the size,
/// are a small part of their time.
const MACHINE_MIN_LEN: usize = 64 * 1024;

fn size_class(len: usize) -> usize {
    let log2 = usize::BITS - len.max(1).leading_zeros() - 1;
    ((log2.saturating_sub(8)) / 2).min(SIZE_CLASSES as u32 - 1) as usize
}

/// Observations that saved less than this say little about speed on typical
/// data (incompressible input is skipped quickly), so they only train the
/// key's own estimate.
const SHARED_SPEED_MIN_SAVING: f64 = 0.1;

/// How many observations the priors of the shared speed model count for.
const PRIOR_WEIGHT: u32 = 2;

/// A single speed observation may move an estimate by at most this factor:
/// a preempted thread is not a slow compressor (the dictionaries' estimates too).
pub(super) const SPEED_OUTLIER_FACTOR: f64 = 4.0;

/// A key's estimates for a candidate are blended with what the model would
/// say without them, as if that were this many observations, and the key's
/// own count for at most [`KEY_WEIGHT_CAP`]: one odd message must not rule a
/// candidate out for good.
const SHRINK_WEIGHT: f64 = 1.0;
const KEY_WEIGHT_CAP: u32 = 8;

/// Candidates expected to save nothing are explored only every this many
/// exploration rounds.
const RECHECK_ROUNDS: u64 = 8;

/// Per candidate, across keys: how long compressing takes, as the prior's
/// `overhead + bytes * per_byte` times learned corrections - one for the
/// machine, refined per size class.
#[derive(Debug, Clone)]
struct CandidateModel {
    choice: Choice,
    prior: Prior,
    machine_factor: f64,
    machine_observations: u32,
    class_factor: [f64; SIZE_CLASSES],
    class_observations: [u32; SIZE_CLASSES],
}

impl CandidateModel {
    fn new(choice: Choice) -> Self {
        CandidateModel {
            choice,
            prior: model::prior(choice),
            machine_factor: 1.0,
            machine_observations: 0,
            class_factor: [1.0; SIZE_CLASSES],
            class_observations: [0; SIZE_CLASSES],
        }
    }

    fn prior_ns(&self, len: usize) -> f64 {
        self.prior.compress_overhead_ns + len as f64 * self.prior.compress_ns_per_byte
    }

    /// Estimated compression time of `len` bytes of typical data, in ns.
    fn compress_ns(&self, len: usize) -> f64 {
        let class = size_class(len);
        let weight = f64::from(self.class_observations[class].min(KEY_WEIGHT_CAP));
        self.prior_ns(len) * shrink(self.class_factor[class], weight, self.machine_factor)
    }

    /// Learns from compressing `len` bytes in `cpu_ns`.
    fn learn(&mut self, len: usize, cpu_ns: f64, rate: f64) {
        let observed = cpu_ns / self.prior_ns(len).max(1.0);
        if len >= MACHINE_MIN_LEN {
            let current = self.machine_factor;
            let clamped = observed.clamp(
                current / SPEED_OUTLIER_FACTOR,
                current * SPEED_OUTLIER_FACTOR,
            );
            self.machine_factor = ewma(
                current,
                clamped,
                self.machine_observations + PRIOR_WEIGHT,
                rate,
            );
            self.machine_observations = self.machine_observations.saturating_add(1);
        }

        let class = size_class(len);
        let count = self.class_observations[class];
        let current = if count == 0 {
            self.machine_factor
        } else {
            self.class_factor[class]
        };
        let clamped = observed.clamp(
            current / SPEED_OUTLIER_FACTOR,
            current * SPEED_OUTLIER_FACTOR,
        );
        self.class_factor[class] = ewma(current, clamped, count, rate);
        self.class_observations[class] = count.saturating_add(1);
    }
}

/// Per key and candidate.
#[derive(Debug, Clone, Copy)]
struct Learned {
    /// The saving of a large message (see `model::size_factor`), EWMA.
    saving: f64,
    /// How much slower than the shared model this key's data compresses, EWMA.
    speed_factor: f64,
    observations: u32,
    /// The key's message count when this candidate was last observed.
    last_observed: u64,
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            saving: 0.0,
            speed_factor: 1.0,
            observations: 0,
            last_observed: 0,
        }
    }
}

impl Learned {
    /// The weight of the key's own estimates against the shared ones.
    fn weight(&self) -> f64 {
        f64::from(self.observations.min(KEY_WEIGHT_CAP))
    }
}

/// Per key.
#[derive(Debug, Clone)]
struct KeyState {
    last_used: u64,
    messages: u64,
    /// The reference (zstd-3) saving for a large message, inferred from
    /// whichever candidates were observed, EWMA.
    reference_saving: f64,
    reference_observations: u32,
    learned: Vec<Learned>,
}

impl KeyState {
    fn new(candidates: usize) -> Self {
        KeyState {
            last_used: 0,
            messages: 0,
            reference_saving: 0.0,
            reference_observations: 0,
            learned: vec![Learned::default(); candidates],
        }
    }
}

/// Whether `choice` compresses, at a level its encoder accepts.
fn valid_candidate(choice: Choice) -> bool {
    match choice.algorithm {
        Algorithm::None => false,
        #[cfg(feature = "zstd")]
        Algorithm::Zstd => super::zstd_codec::levels().contains(&choice.level),
        #[cfg(feature = "brotli")]
        Algorithm::Brotli => super::brotli_codec::QUALITIES.contains(&choice.level),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Updates a moving average: a plain mean over the first observations, then
/// an exponentially weighted one.
fn ewma(current: f64, observed: f64, count: u32, rate: f64) -> f64 {
    let weight = (1.0 / (f64::from(count) + 1.0)).max(rate);
    current + weight * (observed - current)
}

/// Blends a key's estimate (of `weight` observations) with the shared one.
fn shrink(own: f64, weight: f64, shared: f64) -> f64 {
    (own * weight + shared * SHRINK_WEIGHT) / (weight + SHRINK_WEIGHT)
}

/// Picks, per message, the [`Choice`] with the least expected time to
/// deliver: `compress + compressed bytes / link throughput + decompress`.
///
/// For each allowed candidate it estimates:
///
/// - the saving, from what it learned about the key (a per-method moving
///   average of the ratios observed with that candidate, normalised for the
///   message size), or, for a candidate not yet observed on that key, from a
///   prior: the key's ratio with other candidates if there is one, else a
///   byte-entropy probe of the payload (a fixed 512-byte sample) scaled by
///   content type - in both cases scaled by the candidate's expected gain;
/// - the compression time, from priors per algorithm and level corrected by
///   measurements: per candidate (per size class, as fixed costs matter more
///   for small messages) and per key (some data compresses faster);
/// - the decompression time, from priors (the peer's CPU is not observed).
///
/// Payloads under [`SelectorConfig::min_size`] and ones that cannot save
/// enough are sent as they are; when even a free compressor could not pay
/// for its CPU (a fast link), the choice costs a few nanoseconds. Every
/// [`SelectorConfig::explore_every`]th message of a key tries a
/// near-competitive alternative, so estimates stay current; everything is
/// deterministic. Memory is bounded by [`SelectorConfig::max_keys`].
///
/// ```
/// use polycall_core::ContentType;
/// use polycall_proto::compress::{AdaptiveSelector, Algorithm, Choice, SelectorConfig};
/// use std::time::Duration;
///
/// let mut selector = AdaptiveSelector::new(SelectorConfig::default());
/// selector.set_link_throughput(12.5e6); // 100 Mbit/s
///
/// let json = br#"{"user":42,"name":"ada","roles":["admin","dev"]}"#.repeat(100);
/// let choice = selector.choose(1, ContentType::Json, &json, &Algorithm::ALL);
/// assert_ne!(choice, Choice::NONE);
/// // ... compress, send, and say how it went:
/// selector.observe(1, ContentType::Json, choice, json.len(), 180, Duration::from_micros(9));
///
/// // Tiny payloads are not worth it, and neither is a 10 Gbit/s link.
/// assert_eq!(selector.choose(1, ContentType::Json, b"{}", &Algorithm::ALL), Choice::NONE);
/// selector.set_link_throughput(1.25e9);
/// assert_eq!(selector.choose(1, ContentType::Json, &json, &Algorithm::ALL), Choice::NONE);
/// ```
#[derive(Debug, Clone)]
pub struct AdaptiveSelector {
    config: SelectorConfig,
    /// Nanoseconds per byte on the wire.
    wire_ns_per_byte: f64,
    models: Vec<CandidateModel>,
    keys: HashMap<(u64, u8), KeyState>,
    clock: u64,
    /// No candidate could pay for itself at any size: each costs more CPU per
    /// byte than the wire does (recomputed when the link or a model changes).
    never_pays: bool,
}

impl AdaptiveSelector {
    /// A selector with no observations yet.
    pub fn new(config: SelectorConfig) -> Self {
        let mut candidates: Vec<Choice> = Vec::new();
        for &choice in &config.candidates {
            if valid_candidate(choice)
                && !candidates.contains(&choice)
                && candidates.len() < MAX_CANDIDATES
            {
                candidates.push(choice);
            }
        }
        let models = candidates
            .iter()
            .map(|&choice| CandidateModel::new(choice))
            .collect();
        let mut selector = AdaptiveSelector {
            config: SelectorConfig {
                candidates,
                max_keys: config.max_keys.max(1),
                learning_rate: if config.learning_rate.is_finite() {
                    config.learning_rate.clamp(0.001, 1.0)
                } else {
                    0.2
                },
                explore_margin: if config.explore_margin.is_finite() {
                    config.explore_margin.max(0.0)
                } else {
                    0.0
                },
                ..config
            },
            wire_ns_per_byte: 0.0,
            models,
            keys: HashMap::new(),
            clock: 0,
            never_pays: false,
        };
        selector.set_link_throughput(selector.config.link_bytes_per_sec);
        selector
    }

    /// The configuration in force (candidates deduplicated).
    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// Sets the link's throughput in bytes per second, as measured by the IO
    /// layer. Values that are not positive numbers are ignored; infinity
    /// means the wire is free, so nothing is worth compressing.
    pub fn set_link_throughput(&mut self, bytes_per_sec: f64) {
        if bytes_per_sec > 0.0 {
            self.config.link_bytes_per_sec = bytes_per_sec;
            self.wire_ns_per_byte = 1e9 / bytes_per_sec;
            self.update_never_pays();
        }
    }

    /// Whether every candidate's CPU per byte alone (compressing at its best
    /// learned speed, then decompressing) exceeds the wire's time per byte: then,
    /// their fixed costs being positive, nothing pays at any size, and `choose`
    /// answers at once.
    fn update_never_pays(&mut self) {
        let wire = self.wire_ns_per_byte * (1.0 + self.config.explore_margin);
        self.never_pays = self.models.iter().all(|m| {
            let fastest = (0..SIZE_CLASSES)
                .map(|class| {
                    let weight = f64::from(m.class_observations[class].min(KEY_WEIGHT_CAP));
                    shrink(m.class_factor[class], weight, m.machine_factor)
                })
                .fold(f64::INFINITY, f64::min)
                // A key's own data may compress faster than the shared model says.
                / SPEED_OUTLIER_FACTOR;
            m.prior.compress_ns_per_byte * fastest + m.prior.decompress_ns_per_byte > wire
        });
    }

    /// The link throughput in force, in bytes per second.
    pub fn link_throughput(&self) -> f64 {
        self.config.link_bytes_per_sec
    }

    /// Nanoseconds a byte takes on the wire at the link throughput in force.
    #[cfg_attr(not(feature = "zstd"), allow(dead_code))]
    pub(crate) fn wire_ns_per_byte(&self) -> f64 {
        self.wire_ns_per_byte
    }

    /// How many keys the selector currently keeps estimates for.
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// Chooses how to send `payload`, a message of the method identified by
    /// `key`, to a peer that accepts the algorithms in `allowed`.
    ///
    /// Returns [`Choice::NONE`] when nothing allowed is expected to pay for
    /// itself. Feed the outcome back with [`observe`](Self::observe).
    pub fn choose(
        &mut self,
        key: u64,
        content_type: ContentType,
        payload: &[u8],
        allowed: &[Algorithm],
    ) -> Choice {
        let len = payload.len();
        if len < self.config.min_size || len == 0 || self.never_pays {
            return Choice::NONE;
        }
        let n = len as f64;
        let raw_cost = n * self.wire_ns_per_byte;
        let margin = 1.0 + self.config.explore_margin;

        // A candidate can at best save the whole wire time; when even that
        // does not pay for its CPU, no estimate of the ratio is needed.
        let mut any_can_pay = false;
        for m in &self.models {
            if !allowed.contains(&m.choice.algorithm) {
                continue;
            }
            let floor = m.compress_ns(len) + Self::decompress_cost(&m.prior, len);
            if floor <= raw_cost * margin {
                any_can_pay = true;
                break;
            }
        }
        if !any_can_pay {
            return Choice::NONE;
        }

        let state_key = (key, content_type.id());
        self.touch(state_key);
        let Some(state) = self.keys.get_mut(&state_key) else {
            return Choice::NONE;
        };
        state.messages += 1;
        let messages = state.messages;
        let Some(state) = self.keys.get(&state_key) else {
            return Choice::NONE;
        };

        let size_factor = model::size_factor(len);
        // The reference saving for candidates not observed on this key.
        let mut reference: Option<f64> =
            (state.reference_observations > 0).then_some(state.reference_saving);

        let mut best = (Choice::NONE, raw_cost, usize::MAX);
        let mut costs = [f64::INFINITY; MAX_CANDIDATES];
        let mut saves = [false; MAX_CANDIDATES];
        for (i, m) in self.models.iter().enumerate() {
            if !allowed.contains(&m.choice.algorithm) {
                continue;
            }
            let learned = &state.learned[i];
            let reference = *reference.get_or_insert_with(|| {
                model::prior_reference_saving(probe::entropy_bits_per_byte(payload), content_type)
            });
            let mapped = model::from_reference(reference, m.prior.gain);
            let weight = learned.weight();
            let large_saving = shrink(learned.saving, weight, mapped);
            let saving = large_saving * size_factor;
            let compress = m.compress_ns(len) * shrink(learned.speed_factor, weight, 1.0);
            let cost = if saving > 0.0 {
                compress
                    + Self::decompress_cost(&m.prior, len)
                    + n * (1.0 - saving) * self.wire_ns_per_byte
            } else {
                compress + raw_cost
            };
            costs[i] = cost;
            saves[i] = saving > 0.0;
            if cost < best.1 {
                best = (m.choice, cost, i);
            }
        }

        let every = u64::from(self.config.explore_every);
        if every > 0 && messages % every == 0 {
            // Try the near-competitive alternative observed longest ago. One
            // expected to save nothing cannot win unless the data changed, so
            // it is only retried every few rounds.
            let recheck = messages % (every * RECHECK_ROUNDS) == 0;
            let mut pick: Option<(usize, u64)> = None;
            for (i, &cost) in costs.iter().enumerate().take(self.models.len()) {
                if i == best.2 || cost > best.1 * margin || !(saves[i] || recheck) {
                    continue;
                }
                let last = state.learned[i].last_observed;
                if pick.is_none_or(|(_, p)| last < p) {
                    pick = Some((i, last));
                }
            }
            if let Some((i, _)) = pick {
                return self.models[i].choice;
            }
        }
        best.0
    }

    /// Reports how sending a message went: it was `input_len` bytes,
    /// compressed with `choice` to `output_len` bytes in `cpu`.
    ///
    /// Observations of [`Choice::NONE`], of choices that are not candidates
    /// and of empty inputs are ignored.
    pub fn observe(
        &mut self,
        key: u64,
        content_type: ContentType,
        choice: Choice,
        input_len: usize,
        output_len: usize,
        cpu: Duration,
    ) {
        if choice.algorithm == Algorithm::None || input_len == 0 {
            return;
        }
        let Some(i) = self.models.iter().position(|m| m.choice == choice) else {
            return;
        };
        let rate = self.config.learning_rate;
        let n = input_len as f64;
        let saving = (1.0 - output_len as f64 / n).max(0.0);
        let large_saving = (saving / model::size_factor(input_len)).min(model::MAX_SAVING);
        let cpu_ns = cpu.as_secs_f64() * 1e9;
        let gain = self.models[i].prior.gain;
        // The shared model learns first, and the key keeps what is left: how
        // its data differs from the rest (when it is the only key, nothing).
        if saving >= SHARED_SPEED_MIN_SAVING {
            self.models[i].learn(input_len, cpu_ns, rate);
            self.update_never_pays();
        }
        let expected_ns = self.models[i].compress_ns(input_len).max(1.0);
        let speed_factor =
            (cpu_ns / expected_ns).clamp(1.0 / SPEED_OUTLIER_FACTOR, SPEED_OUTLIER_FACTOR);

        let state_key = (key, content_type.id());
        self.touch(state_key);
        let Some(state) = self.keys.get_mut(&state_key) else {
            return;
        };
        let messages = state.messages;
        let learned = &mut state.learned[i];
        learned.saving = ewma(learned.saving, large_saving, learned.observations, rate);
        learned.speed_factor = ewma(
            learned.speed_factor,
            speed_factor,
            learned.observations,
            rate,
        );
        learned.observations = learned.observations.saturating_add(1);
        learned.last_observed = messages;

        let reference = model::to_reference(large_saving, gain);
        state.reference_saving = ewma(
            state.reference_saving,
            reference,
            state.reference_observations,
            rate,
        );
        state.reference_observations = state.reference_observations.saturating_add(1);
    }

    /// Estimated decompression time of `len` bytes, in ns.
    fn decompress_cost(prior: &Prior, len: usize) -> f64 {
        prior.decompress_overhead_ns + len as f64 * prior.decompress_ns_per_byte
    }

    /// Marks `key` as used now, making room for it if it is new.
    fn touch(&mut self, key: (u64, u8)) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(state) = self.keys.get_mut(&key) {
            state.last_used = clock;
            return;
        }
        if self.keys.len() >= self.config.max_keys {
            let oldest = self
                .keys
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.keys.remove(&oldest);
            }
        }
        let mut state = KeyState::new(self.models.len());
        state.last_used = clock;
        self.keys.insert(key, state);
    }
}

/// The largest scratch buffer [`AdaptiveCompressor`] keeps between messages.
const MAX_SCRATCH: usize = 4 << 20;

/// An [`AdaptiveSelector`] and a [`Compressor`] together: chooses, compresses,
/// times the compression and learns from it, in one call.
///
/// ```
/// use bytes::Bytes;
/// use polycall_core::ContentType;
/// use polycall_proto::compress::{AdaptiveCompressor, Algorithm, SelectorConfig};
///
/// let mut encoder = AdaptiveCompressor::new(SelectorConfig::default());
/// let log = Bytes::from(r#"{"ts":1700000000,"level":"info","msg":"request served"}"#.repeat(50));
/// let (algorithm, wire) = encoder.encode(3, ContentType::Json, &log, &Algorithm::ALL);
/// assert_ne!(algorithm, Algorithm::None);
/// assert!(wire.len() < log.len() / 4);
///
/// // Only what the peer accepts is used.
/// let (algorithm, wire) = encoder.encode(3, ContentType::Json, &log, &[Algorithm::None]);
/// assert_eq!(algorithm, Algorithm::None);
/// assert_eq!(wire, log);
/// ```
#[derive(Debug)]
pub struct AdaptiveCompressor {
    selector: AdaptiveSelector,
    compressor: Compressor,
    #[cfg(feature = "zstd")]
    dictionaries: super::dictionary::DictionaryEncoder,
    scratch: Vec<u8>,
    last_choice: Choice,
    clock: crate::Clock,
}

impl AdaptiveCompressor {
    /// An adaptive compressor with no observations yet.
    pub fn new(config: SelectorConfig) -> Self {
        AdaptiveCompressor {
            selector: AdaptiveSelector::new(config),
            compressor: Compressor::new(),
            #[cfg(feature = "zstd")]
            dictionaries: Default::default(),
            scratch: Vec::new(),
            last_choice: Choice::NONE,
            clock: crate::Clock::system(),
        }
    }

    /// Times compression with `clock` instead of the system's (a test or a fuzzer
    /// gives a fixed one, and the selector's choices repeat run after run).
    pub fn with_clock(mut self, clock: crate::Clock) -> Self {
        #[cfg(feature = "zstd")]
        self.dictionaries.set_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// The clock compression is timed with.
    pub fn clock(&self) -> &crate::Clock {
        &self.clock
    }

    /// The selector.
    pub fn selector(&self) -> &AdaptiveSelector {
        &self.selector
    }

    /// The selector, e.g. to update the link throughput.
    pub fn selector_mut(&mut self) -> &mut AdaptiveSelector {
        &mut self.selector
    }

    /// Chooses, compresses, times the compression and feeds the observation
    /// back. Returns the algorithm actually used and the bytes to send:
    /// `(Algorithm::None, payload.clone())` (zero-copy) when it chose not to
    /// compress or when the output was not smaller.
    ///
    /// With [`Algorithm::ZstdDict`] allowed, a small message of a method with a
    /// dictionary goes with it when that is expected to deliver it soonest, and
    /// small messages of a method without one are sampled to train one (see
    /// [`take_dictionary_job`](Self::take_dictionary_job)).
    pub fn encode(
        &mut self,
        key: u64,
        content_type: ContentType,
        payload: &Bytes,
        allowed: &[Algorithm],
    ) -> (Algorithm, Bytes) {
        #[cfg(feature = "zstd")]
        if allowed.contains(&Algorithm::ZstdDict)
            && self
                .dictionaries
                .choose(key, payload, self.selector.wire_ns_per_byte())
        {
            return self.encode_with_dictionary(key, payload);
        }
        let choice = self.selector.choose(key, content_type, payload, allowed);
        self.last_choice = choice;
        if choice.algorithm == Algorithm::None {
            return (Algorithm::None, payload.clone());
        }
        self.scratch.clear();
        // Setting up a context is a one-off, not the speed of the level.
        if self.compressor.prepare(choice).is_err() {
            return (Algorithm::None, payload.clone());
        }
        let (compressor, scratch) = (&mut self.compressor, &mut self.scratch);
        let (result, cpu) = self
            .clock
            .time(|| compressor.compress(choice, payload, scratch));
        let sent = match result {
            Ok(()) => {
                self.selector.observe(
                    key,
                    content_type,
                    choice,
                    payload.len(),
                    self.scratch.len(),
                    cpu,
                );
                if self.scratch.len() < payload.len() {
                    (choice.algorithm, Bytes::copy_from_slice(&self.scratch))
                } else {
                    (Algorithm::None, payload.clone())
                }
            }
            Err(_) => (Algorithm::None, payload.clone()),
        };
        // Keep the scratch buffer from pinning a huge allocation forever.
        if self.scratch.capacity() > MAX_SCRATCH {
            self.scratch = Vec::new();
        }
        sent
    }

    #[cfg(feature = "zstd")]
    fn encode_with_dictionary(&mut self, key: u64, payload: &Bytes) -> (Algorithm, Bytes) {
        self.last_choice = Choice {
            algorithm: Algorithm::ZstdDict,
            level: super::dictionary::LEVEL,
        };
        self.scratch.clear();
        let (dictionaries, scratch) = (&mut self.dictionaries, &mut self.scratch);
        let (result, cpu) = self
            .clock
            .time(|| dictionaries.compress(key, payload, scratch));
        if result.is_err() {
            return (Algorithm::None, payload.clone());
        }
        self.dictionaries
            .observe(key, payload.len(), self.scratch.len(), cpu);
        if self.scratch.len() < payload.len() {
            (Algorithm::ZstdDict, Bytes::copy_from_slice(&self.scratch))
        } else {
            (Algorithm::None, payload.clone())
        }
    }

    /// A dictionary training job, once a method has given enough samples: run
    /// it away from the connection ([`TrainJob::run`](super::TrainJob::run))
    /// and give the result to [`add_dictionary`](Self::add_dictionary).
    #[cfg(feature = "zstd")]
    pub fn take_dictionary_job(&mut self) -> Option<super::TrainJob> {
        self.dictionaries.take_job()
    }

    /// Puts a trained dictionary in use. Returns its id and the bytes to ship
    /// to the peer before any message compressed with it, or `None` when the
    /// training gave nothing worth using (the method then goes without).
    #[cfg(feature = "zstd")]
    pub fn add_dictionary(&mut self, trained: super::TrainedDictionary) -> Option<(u32, Bytes)> {
        self.dictionaries.add(trained)
    }

    /// Bounds the dictionaries trained from now on to `max_size` bytes (the
    /// peer's frame size less a frame's header).
    #[cfg(feature = "zstd")]
    pub fn limit_dictionary_size(&mut self, max_size: usize) {
        self.dictionaries.set_max_size(max_size);
    }

    /// What the selector chose for the last message [`encode`](Self::encode)d
    /// (the level included), even if the result was then sent uncompressed
    /// because it was not smaller.
    pub fn last_choice(&self) -> Choice {
        self.last_choice
    }
}

/// The selector's tests compress for real: they need both codecs.
#[cfg(all(test, feature = "zstd", feature = "brotli"))]
mod tests {
    use super::*;
    use crate::compress::Decompressor;

    const SLOW: f64 = 12.5e6; // 100 Mbit/s
    const FAST: f64 = 1.25e9; // 10 Gbit/s

    fn json_records(len: usize) -> Vec<u8> {
        let mut out = String::from("[");
        let mut i = 0u64;
        while out.len() < len {
            out.push_str(&format!(
                r#"{{"id":{i},"service":"billing","level":"info","path":"/v1/invoices/{}","status":200,"latency_ms":{}}},"#,
                i * 7919 % 10007,
                i * 31 % 997
            ));
            i += 1;
        }
        out.truncate(len);
        out.into_bytes()
    }

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut x = 0x853c_49e6_748f_ea9bu64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as u8
            })
            .collect()
    }

    fn selector(link: f64) -> AdaptiveSelector {
        AdaptiveSelector::new(SelectorConfig {
            link_bytes_per_sec: link,
            ..SelectorConfig::default()
        })
    }

    #[test]
    fn random_bytes_go_raw() {
        let mut s = selector(SLOW);
        let payload = random_bytes(64 * 1024);
        for _ in 0..40 {
            assert_eq!(
                s.choose(1, ContentType::Raw, &payload, &Algorithm::ALL),
                Choice::NONE
            );
        }
    }

    #[test]
    fn tiny_messages_go_raw() {
        let mut s = selector(SLOW);
        let tiny = br#"{"ok":true,"ok":true,"ok":true}"#;
        assert_eq!(
            s.choose(1, ContentType::Json, tiny, &Algorithm::ALL),
            Choice::NONE
        );
        assert_eq!(s.tracked_keys(), 0, "tiny messages cost no state");
    }

    #[test]
    fn repetitive_json_is_compressed_on_a_slow_link() {
        let mut s = selector(SLOW);
        let payload = json_records(32 * 1024);
        let choice = s.choose(1, ContentType::Json, &payload, &Algorithm::ALL);
        assert_ne!(choice, Choice::NONE);
    }

    #[test]
    fn nothing_pays_on_a_fast_link() {
        let mut s = selector(FAST);
        let payload = json_records(32 * 1024);
        for _ in 0..40 {
            assert_eq!(
                s.choose(1, ContentType::Json, &payload, &Algorithm::ALL),
                Choice::NONE
            );
        }
        // And the same selector changes its mind when the link slows down.
        s.set_link_throughput(SLOW);
        assert_ne!(
            s.choose(1, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
    }

    #[test]
    fn respects_allowed_algorithms() {
        let mut s = selector(SLOW);
        let payload = json_records(32 * 1024);
        let choice = s.choose(1, ContentType::Json, &payload, &[Algorithm::Brotli]);
        assert_eq!(choice.algorithm, Algorithm::Brotli);
        assert_eq!(s.choose(1, ContentType::Json, &payload, &[]), Choice::NONE);
        assert_eq!(
            s.choose(1, ContentType::Json, &payload, &[Algorithm::None]),
            Choice::NONE
        );
    }

    #[test]
    fn learning_changes_the_decision() {
        // Only zstd-3 and brotli-4, so the test does not depend on which
        // level wins. The probe makes them close on this JSON.
        let config = SelectorConfig {
            candidates: vec![Choice::zstd(3), Choice::brotli(4)],
            link_bytes_per_sec: SLOW,
            explore_every: 0,
            ..SelectorConfig::default()
        };
        let payload = json_records(64 * 1024);
        let n = payload.len();

        let mut s = AdaptiveSelector::new(config.clone());
        let first = s.choose(9, ContentType::Json, &payload, &Algorithm::ALL);
        assert_eq!(first, Choice::zstd(3));
        // Observing that brotli-4 is much better on this key flips it...
        for _ in 0..5 {
            s.observe(
                9,
                ContentType::Json,
                Choice::zstd(3),
                n,
                n / 3,
                Duration::from_micros(150),
            );
            s.observe(
                9,
                ContentType::Json,
                Choice::brotli(4),
                n,
                n / 30,
                Duration::from_micros(500),
            );
        }
        assert_eq!(
            s.choose(9, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::brotli(4)
        );
        // ...but only for that key.
        assert_eq!(
            s.choose(10, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::zstd(3)
        );

        // Observing that this key's data does not compress at all makes it
        // send it raw, whatever the probe says.
        let mut s = AdaptiveSelector::new(config);
        assert_ne!(
            s.choose(4, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
        for choice in [Choice::zstd(3), Choice::brotli(4)] {
            for _ in 0..3 {
                s.observe(
                    4,
                    ContentType::Json,
                    choice,
                    n,
                    n + 9,
                    Duration::from_micros(300),
                );
            }
        }
        assert_eq!(
            s.choose(4, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
    }

    #[test]
    fn slow_compression_is_learned() {
        let config = SelectorConfig {
            candidates: vec![Choice::zstd(1)],
            link_bytes_per_sec: SLOW,
            explore_every: 0,
            ..SelectorConfig::default()
        };
        let mut s = AdaptiveSelector::new(config);
        let payload = json_records(64 * 1024);
        let n = payload.len();
        assert_eq!(
            s.choose(2, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::zstd(1)
        );
        // A machine where zstd-1 takes 100 ns a byte: 6.5 ms, longer than the
        // 5.2 ms the raw payload takes on the wire.
        for _ in 0..10 {
            s.observe(
                2,
                ContentType::Json,
                Choice::zstd(1),
                n,
                n / 4,
                Duration::from_nanos(100 * n as u64),
            );
        }
        assert_eq!(
            s.choose(2, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
    }

    #[test]
    fn explores_near_competitive_candidates_deterministically() {
        let config = SelectorConfig {
            candidates: vec![Choice::zstd(1), Choice::zstd(3)],
            link_bytes_per_sec: SLOW,
            explore_every: 4,
            explore_margin: 0.5,
            ..SelectorConfig::default()
        };
        let payload = json_records(16 * 1024);
        let run = || {
            let mut s = AdaptiveSelector::new(config.clone());
            (0..16)
                .map(|_| s.choose(5, ContentType::Json, &payload, &Algorithm::ALL))
                .collect::<Vec<_>>()
        };
        let picks = run();
        assert_eq!(picks, run(), "deterministic");
        let favourite = picks[0];
        for (i, pick) in picks.iter().enumerate() {
            if (i + 1) % 4 == 0 {
                assert_ne!(*pick, favourite, "message {} explores", i + 1);
            } else {
                assert_eq!(*pick, favourite);
            }
        }
    }

    #[test]
    fn key_memory_is_bounded() {
        let mut s = AdaptiveSelector::new(SelectorConfig {
            max_keys: 8,
            ..SelectorConfig::default()
        });
        let payload = json_records(4096);
        for key in 0..100 {
            s.choose(key, ContentType::Json, &payload, &Algorithm::ALL);
        }
        assert_eq!(s.tracked_keys(), 8);
        // The most recent keys are the ones kept.
        s.observe(
            99,
            ContentType::Json,
            Choice::zstd(3),
            4096,
            500,
            Duration::from_micros(10),
        );
        assert_eq!(s.tracked_keys(), 8);
    }

    #[test]
    fn size_classes_are_four_times_apart() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1023), 0);
        assert_eq!(size_class(1024), 1);
        assert_eq!(size_class(4095), 1);
        assert_eq!(size_class(4096), 2);
        assert_eq!(size_class(64 * 1024), 4);
        assert_eq!(size_class(1 << 20), 6);
        assert_eq!(size_class(usize::MAX), SIZE_CLASSES - 1);
    }

    #[test]
    fn no_candidates_means_never_compress() {
        let mut s = AdaptiveSelector::new(SelectorConfig {
            candidates: vec![Choice::NONE, Choice::brotli(12), Choice::zstd(1000)],
            ..SelectorConfig::default()
        });
        assert!(s.config().candidates.is_empty());
        let payload = json_records(32 * 1024);
        assert_eq!(
            s.choose(1, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
    }

    #[test]
    fn bad_throughput_is_ignored() {
        let mut s = selector(SLOW);
        s.set_link_throughput(f64::NAN);
        s.set_link_throughput(-1.0);
        s.set_link_throughput(0.0);
        assert_eq!(s.link_throughput(), SLOW);
        s.set_link_throughput(f64::INFINITY);
        let payload = json_records(32 * 1024);
        assert_eq!(
            s.choose(1, ContentType::Json, &payload, &Algorithm::ALL),
            Choice::NONE
        );
    }

    #[test]
    fn adaptive_compressor_round_trips() {
        let mut encoder = AdaptiveCompressor::new(SelectorConfig::default());
        let mut decoder = Decompressor::new();
        let inputs = [json_records(50_000), random_bytes(20_000), b"tiny".to_vec()];
        for _ in 0..20 {
            for (key, input) in inputs.iter().enumerate() {
                let payload = Bytes::from(input.clone());
                let (algorithm, wire) =
                    encoder.encode(key as u64, ContentType::Json, &payload, &Algorithm::ALL);
                if algorithm == Algorithm::None {
                    assert_eq!(wire.as_ptr(), payload.as_ptr(), "zero-copy");
                } else {
                    assert!(wire.len() < payload.len());
                }
                let back = decoder.decompress(algorithm, &wire, payload.len()).unwrap();
                assert_eq!(back, *input);
            }
        }
    }
}
