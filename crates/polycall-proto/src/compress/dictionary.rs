//! Per-method zstd dictionaries for small messages.
//!
//! A 300-byte JSON message gains little from zstd alone: the compressor has
//! nothing to refer back to but the message itself. A dictionary trained on the
//! method's earlier messages holds what they repeat (field names, enum values,
//! the shape of the record), and each message then costs little more than what
//! is new in it. The sender trains one per method from its first messages,
//! ships it to the peer once in a `DICTIONARY` frame and from then on may
//! compress that method's small messages with it ([`Algorithm::ZstdDict`]).
//!
//! The pieces, sender side ([`super::AdaptiveCompressor`] owns them):
//!
//! - samples: every message of a method between [`MIN_SAMPLE`] and
//!   [`SMALL_MESSAGE`] bytes is copied aside, while the link is slow enough
//!   for compressing it to pay at all (on a fast link nothing is collected and
//!   nothing is trained: the cost is one comparison a message);
//! - training: after [`SAMPLES`] messages (and at least [`MIN_SAMPLE_BYTES`]),
//!   a [`TrainJob`] is handed out, to be run where it cannot stall a
//!   connection ([`TrainJob::run`] is a pure function). It trains with zstd's
//!   trainer, names the dictionary with the connection's next id, and measures
//!   how much the dictionary saves on the samples and how long that takes;
//! - use: once added back ([`super::AdaptiveCompressor::add_dictionary`],
//!   which returns the bytes to ship), a small message of the method is
//!   compressed with the dictionary when the expected compression time plus
//!   the bytes it saves on the wire beat sending it as it is; the estimates
//!   follow every message sent.
//!
//! Receiver side ([`super::Decompressor::add_dictionary`]): a dictionary is at
//! most [`MAX_DICTIONARY_SIZE`] bytes, a connection holds at most
//! [`MAX_DICTIONARIES`] of them from its peer, each must be in zstd's
//! dictionary format and carry the id it was announced with, and a message
//! compressed with one decodes to at most [`MAX_DICTIONARY_MESSAGE`] bytes.
//! The zstd frame names its dictionary, so a message needs no other field.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use zstd::zstd_safe::{self, CCtx, CDict};

use super::adaptive::SPEED_OUTLIER_FACTOR;
use super::{Algorithm, CompressError};

/// The largest dictionary a receiver accepts, in bytes.
pub const MAX_DICTIONARY_SIZE: usize = 8 * 1024;
/// The most dictionaries a receiver keeps from one peer (one per method).
pub const MAX_DICTIONARIES: usize = 32;
/// The most a message compressed with a dictionary may decode to, in bytes.
/// Senders use dictionaries for messages of at most [`SMALL_MESSAGE`] bytes.
pub const MAX_DICTIONARY_MESSAGE: usize = 64 * 1024;
/// The first dictionary id a connection gives (zstd reserves ids below 32768
/// for a public registry); each further dictionary takes the next.
pub const FIRST_DICTIONARY_ID: u32 = 32_768;

/// Messages of at most this many bytes are compressed with their method's
/// dictionary (and sampled for training it).
pub const SMALL_MESSAGE: usize = 4 * 1024;
/// Messages shorter than this are neither sampled nor compressed with a
/// dictionary.
pub const MIN_SAMPLE: usize = 16;
/// How many messages of a method are sampled before its dictionary is trained.
pub const SAMPLES: usize = 64;
/// The least sampled bytes a dictionary is trained from.
pub const MIN_SAMPLE_BYTES: usize = 4 * 1024;
/// The most bytes sampled from one method: with that much, training starts
/// after fewer than [`SAMPLES`] messages.
pub const MAX_SAMPLE_BYTES: usize = 64 * 1024;
/// Training needs at least this many messages.
const MIN_SAMPLES: usize = 8;
/// Training jobs handed out and not yet taken, at most: a caller that never takes
/// them (`AdaptiveCompressor::take_dictionary_job`) stops the sampling there.
const MAX_UNTAKEN_JOBS: usize = 4;
/// The least compression time expected, as a factor of `FIXED_BYTES + len` ns:
/// sampling is worth it only where a dictionary this fast could pay.
const MIN_FACTOR: f64 = 1.0;
/// The dictionary size trained (at most; the peer's frame size may bound it
/// lower).
pub const TRAINED_SIZE: usize = 4 * 1024;
/// The smallest dictionary worth training: a peer with frames smaller than
/// this plus a header gets none.
const MIN_TRAINED_SIZE: usize = 512;
/// The zstd level messages are compressed at with a dictionary.
pub(crate) const LEVEL: i32 = 3;
/// Methods sampled at the same time, at most; a further method waits for one
/// to finish.
const MAX_COLLECTING: usize = 16;
/// A dictionary that saves less than this fraction on its own samples is not
/// shipped.
const MIN_SAVING: f64 = 0.1;
/// Expected decompression time of a small message with a dictionary: a fixed
/// part and a part per decoded byte, in nanoseconds.
const DECOMPRESS_NS: f64 = 400.0;
const DECOMPRESS_NS_PER_BYTE: f64 = 0.5;
/// Compression time is modelled as `factor * (FIXED_BYTES + len)` ns.
const FIXED_BYTES: f64 = 300.0;
/// Weight of the newest observation in the moving averages.
const RATE: f64 = 0.1;
/// A dictionary not used for this many messages of its method (they were
/// expected to go sooner without) is used for the next one, to check.
const EXPLORE_EVERY: u32 = 32;
/// zstd's dictionary magic number (little-endian at the start of a dictionary).
const DICTIONARY_MAGIC: u32 = 0xEC30_A437;

/// Training work for one method's dictionary, to run away from the connection
/// ([`TrainJob::run`]).
#[derive(Debug, Clone)]
pub struct TrainJob {
    key: u64,
    id: u32,
    max_size: usize,
    samples: Vec<u8>,
    sizes: Vec<usize>,
    clock: crate::Clock,
}

/// What [`TrainJob::run`] produced: a dictionary ready to add
/// ([`super::AdaptiveCompressor::add_dictionary`]), or the reason there is none.
#[derive(Debug, Clone)]
pub struct TrainedDictionary {
    key: u64,
    id: u32,
    result: Result<Trained, String>,
}

#[derive(Debug, Clone)]
struct Trained {
    data: Bytes,
    /// Fraction of the held-out samples' bytes the dictionary saved.
    saving: f64,
    /// Compression time per message, as `factor * (FIXED_BYTES + len)` ns (the
    /// median over the held-out samples).
    factor: f64,
}

impl TrainJob {
    /// The dictionary id this job names its dictionary with.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// How many sample messages the dictionary is trained from.
    pub fn samples(&self) -> usize {
        self.sizes.len()
    }

    /// Trains the dictionary (milliseconds of CPU: run it where it cannot hold
    /// up a connection) on three quarters of the samples and measures it on the
    /// last quarter.
    pub fn run(self) -> TrainedDictionary {
        let result = train(
            &self.samples,
            &self.sizes,
            self.max_size,
            self.id,
            &self.clock,
        );
        TrainedDictionary {
            key: self.key,
            id: self.id,
            result,
        }
    }
}

impl TrainedDictionary {
    /// The dictionary's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The dictionary's size in bytes, or the reason training gave none.
    pub fn size(&self) -> Result<usize, &str> {
        match &self.result {
            Ok(t) => Ok(t.data.len()),
            Err(e) => Err(e),
        }
    }

    /// The fraction of the held-out samples' bytes the dictionary saved (0
    /// without one).
    pub fn saving(&self) -> f64 {
        self.result.as_ref().map_or(0.0, |t| t.saving)
    }
}

fn train(
    samples: &[u8],
    sizes: &[usize],
    max_size: usize,
    id: u32,
    clock: &crate::Clock,
) -> Result<Trained, String> {
    // Trained on the first three quarters, measured on the rest: on its own
    // training samples any dictionary looks good (it holds pieces of them).
    let held_out = (sizes.len() / 4).max(1);
    let (train_sizes, test_sizes) = sizes.split_at(sizes.len() - held_out);
    let split: usize = train_sizes.iter().sum();
    let mut data = zstd::dict::from_continuous(&samples[..split], train_sizes, max_size)
        .map_err(|e| format!("training failed: {e}"))?;
    if data.len() < 8
        || u32::from_le_bytes([data[0], data[1], data[2], data[3]]) != DICTIONARY_MAGIC
    {
        return Err("the trainer returned no formatted dictionary".to_owned());
    }
    // The id is the dictionary's name on this connection: zstd writes it into
    // every frame compressed with it, and the peer finds the dictionary by it.
    data[4..8].copy_from_slice(&id.to_le_bytes());
    let cdict = CDict::try_create(&data, LEVEL).ok_or("zstd refused the trained dictionary")?;
    let mut cctx = CCtx::try_create().ok_or("no zstd context")?;
    let mut out = Vec::with_capacity(SMALL_MESSAGE * 2);
    let (mut raw, mut wire) = (0usize, 0usize);
    // Per sample, the time as a factor of the model; the median is kept (this
    // thread may be preempted at any time, by design).
    let mut factors = Vec::with_capacity(test_sizes.len());
    let mut at = split;
    for &size in test_sizes {
        let sample = &samples[at..at + size];
        at += size;
        out.clear();
        let (r, cpu) = clock.time(|| cctx.compress_using_cdict(&mut out, sample, &cdict));
        r.map_err(|code| format!("compressing a sample: {}", zstd_safe::get_error_name(code)))?;
        raw += size;
        wire += out.len();
        factors.push(cpu.as_secs_f64() * 1e9 / (FIXED_BYTES + size as f64));
    }
    factors.sort_by(f64::total_cmp);
    let saving = 1.0 - wire as f64 / raw.max(1) as f64;
    if saving < MIN_SAVING {
        return Err(format!(
            "the dictionary saves {:.0}% of the samples held out: not worth shipping",
            saving * 100.0
        ));
    }
    Ok(Trained {
        data: Bytes::from(data),
        saving,
        factor: factors[factors.len() / 2],
    })
}

/// A method's dictionary, in use.
struct Ready {
    cdict: CDict<'static>,
    /// Fraction of a message's bytes saved, moving average.
    saving: f64,
    /// Compression time as `factor * (FIXED_BYTES + len)` ns, moving average.
    factor: f64,
    /// Messages sent without it since it was last used.
    skipped: u32,
}

enum Method {
    Collecting {
        samples: Vec<u8>,
        sizes: Vec<usize>,
    },
    /// The job for dictionary `id` is out.
    Training {
        id: u32,
    },
    Ready(Box<Ready>),
    /// Training failed or gave a dictionary not worth using.
    Unusable,
}

/// The sender's dictionaries: samples, training jobs and trained dictionaries
/// per method key, for one connection.
pub(crate) struct DictionaryEncoder {
    methods: HashMap<u64, Method>,
    collecting: usize,
    next_id: u32,
    jobs: Vec<TrainJob>,
    cctx: Option<CCtx<'static>>,
    max_size: usize,
    clock: crate::Clock,
}

impl Default for DictionaryEncoder {
    fn default() -> Self {
        DictionaryEncoder {
            methods: HashMap::new(),
            collecting: 0,
            next_id: FIRST_DICTIONARY_ID,
            jobs: Vec::new(),
            cctx: None,
            max_size: TRAINED_SIZE,
            clock: crate::Clock::system(),
        }
    }
}

impl std::fmt::Debug for DictionaryEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DictionaryEncoder")
            .field("methods", &self.methods.len())
            .field("next_id", &self.next_id)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl DictionaryEncoder {
    /// Bounds the dictionaries trained from now on to `max_size` bytes (the
    /// peer's frame size less a header); under [`MIN_TRAINED_SIZE`], none are.
    pub(crate) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size.min(TRAINED_SIZE);
    }

    /// Times training and measurements with `clock` (a test's fixed one, for runs
    /// that repeat).
    pub(crate) fn set_clock(&mut self, clock: crate::Clock) {
        self.clock = clock;
    }

    /// Whether a dictionary could pay for a `len`-byte message on a link of
    /// `wire_ns_per_byte`: a gate, not a bound — the message's wire time must be
    /// at least twice what compressing (at [`MIN_FACTOR`]) and decompressing it is
    /// expected to cost at best. On a fast link (loopback) nothing passes, and
    /// nothing is sampled or trained.
    fn could_pay(len: usize, wire_ns_per_byte: f64) -> bool {
        let n = len as f64;
        (MIN_SAMPLE..=SMALL_MESSAGE).contains(&len)
            && n * wire_ns_per_byte
                > 2.0
                    * (DECOMPRESS_NS + DECOMPRESS_NS_PER_BYTE * n + MIN_FACTOR * (FIXED_BYTES + n))
    }

    /// Whether `payload`, a message of method `key`, goes with the method's
    /// dictionary; if the method has none yet, it may be kept as a sample.
    pub(crate) fn choose(&mut self, key: u64, payload: &[u8], wire_ns_per_byte: f64) -> bool {
        let len = payload.len();
        if !Self::could_pay(len, wire_ns_per_byte) {
            return false;
        }
        match self.methods.get_mut(&key) {
            Some(Method::Ready(d)) => {
                let n = len as f64;
                let cost = d.factor * (FIXED_BYTES + n)
                    + DECOMPRESS_NS
                    + DECOMPRESS_NS_PER_BYTE * n
                    + n * (1.0 - d.saving) * wire_ns_per_byte;
                // Estimates change only when the dictionary is used: every so
                // often it is, so that one slow measurement (a preempted thread)
                // does not put it out of use for good.
                let use_it = cost < n * wire_ns_per_byte || d.skipped >= EXPLORE_EVERY;
                d.skipped = if use_it { 0 } else { d.skipped + 1 };
                use_it
            }
            Some(Method::Collecting { samples, sizes }) => {
                if samples.len() + len <= MAX_SAMPLE_BYTES {
                    samples.extend_from_slice(payload);
                    sizes.push(len);
                }
                let enough = (sizes.len() >= SAMPLES
                    || samples.len() + SMALL_MESSAGE > MAX_SAMPLE_BYTES)
                    && samples.len() >= MIN_SAMPLE_BYTES
                    && sizes.len() >= MIN_SAMPLES;
                if enough && self.jobs.len() < MAX_UNTAKEN_JOBS {
                    let samples = std::mem::take(samples);
                    let sizes = std::mem::take(sizes);
                    self.collecting -= 1;
                    let id = self.next_id;
                    self.next_id += 1;
                    self.methods.insert(key, Method::Training { id });
                    self.jobs.push(TrainJob {
                        key,
                        id,
                        max_size: self.max_size,
                        samples,
                        sizes,
                        clock: self.clock.clone(),
                    });
                } else if !enough && sizes.len() >= 4 * SAMPLES {
                    // Too little to train from after many messages: give up.
                    self.collecting -= 1;
                    self.methods.insert(key, Method::Unusable);
                }
                false
            }
            Some(Method::Training { .. } | Method::Unusable) => false,
            None => {
                let given = (self.next_id - FIRST_DICTIONARY_ID) as usize;
                // No new method while jobs wait untaken: a caller that never takes
                // them stops the sampling there.
                if self.collecting < MAX_COLLECTING
                    && given + self.collecting < MAX_DICTIONARIES
                    && self.max_size >= MIN_TRAINED_SIZE
                    && self.jobs.len() < MAX_UNTAKEN_JOBS
                {
                    self.collecting += 1;
                    self.methods.insert(
                        key,
                        Method::Collecting {
                            samples: payload.to_vec(),
                            sizes: vec![len],
                        },
                    );
                }
                false
            }
        }
    }

    /// Compresses `input` with the dictionary of method `key`, appending to
    /// `out` (left as it was on error).
    pub(crate) fn compress(
        &mut self,
        key: u64,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let Some(Method::Ready(d)) = self.methods.get(&key) else {
            return Err(CompressError::Dictionary {
                detail: "the method has no dictionary".to_owned(),
            });
        };
        let cctx =
            match &mut self.cctx {
                Some(c) => c,
                None => self.cctx.insert(CCtx::try_create().ok_or_else(|| {
                    CompressError::encode(Algorithm::ZstdDict, "no zstd context")
                })?),
            };
        super::zstd_codec::append_frame(out, input.len(), Algorithm::ZstdDict, |tail| {
            cctx.compress_using_cdict(tail, input, &d.cdict)
                .map_err(|code| zstd_safe::get_error_name(code).to_owned())
        })
    }

    /// Learns from compressing a `input_len`-byte message of `key` with its
    /// dictionary into `output_len` bytes in `cpu`.
    pub(crate) fn observe(&mut self, key: u64, input_len: usize, output_len: usize, cpu: Duration) {
        if let Some(Method::Ready(d)) = self.methods.get_mut(&key)
            && input_len > 0
        {
            let saving = (1.0 - output_len as f64 / input_len as f64).max(0.0);
            d.saving += RATE * (saving - d.saving);
            let factor = (cpu.as_secs_f64() * 1e9 / (FIXED_BYTES + input_len as f64)).clamp(
                d.factor / SPEED_OUTLIER_FACTOR,
                d.factor * SPEED_OUTLIER_FACTOR,
            );
            d.factor += RATE * (factor - d.factor);
        }
    }

    /// A training job waiting to run, if any.
    pub(crate) fn take_job(&mut self) -> Option<TrainJob> {
        self.jobs.pop()
    }

    /// Puts a trained dictionary in use; returns its id and bytes to ship to
    /// the peer, or `None` when training gave nothing worth using.
    pub(crate) fn add(&mut self, trained: TrainedDictionary) -> Option<(u32, Bytes)> {
        // Only the result of the job this encoder handed out for the method, by
        // its id (another connection's result with the same id would still be a
        // valid dictionary carrying this id).
        if !matches!(self.methods.get(&trained.key), Some(Method::Training { id }) if *id == trained.id)
        {
            return None;
        }
        let ready = trained.result.ok().and_then(|t| {
            let cdict = CDict::try_create(&t.data, LEVEL)?;
            Some((
                t.data,
                Ready {
                    cdict,
                    saving: t.saving,
                    factor: t.factor.max(1e-3),
                    skipped: 0,
                },
            ))
        });
        match ready {
            Some((data, ready)) => {
                self.methods
                    .insert(trained.key, Method::Ready(Box::new(ready)));
                Some((trained.id, data))
            }
            None => {
                self.methods.insert(trained.key, Method::Unusable);
                None
            }
        }
    }
}

/// Checks a dictionary received from the peer as dictionary `id`: its size,
/// zstd's format and the id it carries.
pub(crate) fn check_received(id: u32, data: &[u8]) -> Result<(), CompressError> {
    let refuse = |detail: String| Err(CompressError::Dictionary { detail });
    if data.len() > MAX_DICTIONARY_SIZE {
        return refuse(format!(
            "dictionary {id} is {} bytes, over the limit of {MAX_DICTIONARY_SIZE}",
            data.len()
        ));
    }
    if data.len() < 8
        || u32::from_le_bytes([data[0], data[1], data[2], data[3]]) != DICTIONARY_MAGIC
    {
        return refuse(format!(
            "dictionary {id} is not in zstd's dictionary format"
        ));
    }
    let carried = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if carried != id {
        return refuse(format!("dictionary {id} carries the id {carried}"));
    }
    if id < FIRST_DICTIONARY_ID {
        return refuse(format!("dictionary id {id} is below {FIRST_DICTIONARY_ID}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Decompressor;

    const SLOW: f64 = 80.0; // ns per byte: 100 Mbit/s
    const FAST: f64 = 0.8; // 10 Gbit/s

    /// Small JSON records of one method: the same fields, varying values.
    fn record(i: u64) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let levels = ["info", "warn", "debug", "error"];
        format!(
            r#"{{"ts":{},"level":"{}","service":"checkout","route":"/api/v2/orders/{}","status":{},"latency_ms":{},"user":"u{}","region":"eu-west-{}","trace_id":"{:016x}"}}"#,
            1_700_000_000 + i,
            levels[(next() % 4) as usize],
            next() % 100_000,
            [200, 201, 404, 500][(next() % 4) as usize],
            next() % 2_000,
            next() % 10_000,
            next() % 3,
            next()
        )
        .into_bytes()
    }

    fn trained(encoder: &mut DictionaryEncoder, key: u64) -> (u32, Bytes) {
        for i in 0..SAMPLES as u64 {
            assert!(!encoder.choose(key, &record(i), SLOW));
        }
        let job = encoder.take_job().expect("a job after enough samples");
        assert_eq!(job.samples(), SAMPLES);
        let done = job.run();
        assert!(done.saving() > 0.3, "saving {}", done.saving());
        encoder.add(done).expect("a dictionary to ship")
    }

    #[test]
    fn trains_ships_and_round_trips() {
        let mut encoder = DictionaryEncoder::default();
        let (id, data) = trained(&mut encoder, 7);
        assert_eq!(id, FIRST_DICTIONARY_ID);
        assert!(data.len() <= TRAINED_SIZE);
        assert!(matches!(encoder.methods.get(&7), Some(Method::Ready(_))));

        let mut decoder = Decompressor::new();
        decoder.add_dictionary(id, &data).unwrap();
        let (mut plain, mut with) = (0, 0);
        for i in 1000..1100 {
            let message = record(i);
            assert!(encoder.choose(7, &message, SLOW), "a slow link uses it");
            assert!(!encoder.choose(7, &message, FAST), "a fast link does not");
            let mut out = Vec::new();
            encoder.compress(7, &message, &mut out).unwrap();
            with += out.len();
            plain += zstd::bulk::compress(&message, 3).unwrap().len();
            let back = decoder
                .decompress(Algorithm::ZstdDict, &out, MAX_DICTIONARY_MESSAGE)
                .unwrap();
            assert_eq!(back, message);
        }
        assert!(
            with * 2 <= plain,
            "{with} bytes with the dictionary against {plain} without"
        );
    }

    #[test]
    fn one_slow_measurement_does_not_retire_a_dictionary() {
        let mut encoder = DictionaryEncoder::default();
        trained(&mut encoder, 7);
        let message = record(1);
        assert!(encoder.choose(7, &message, SLOW));
        // Preempted: a compression that took 50 ms.
        for _ in 0..3 {
            encoder.observe(
                7,
                message.len(),
                message.len() / 3,
                Duration::from_millis(50),
            );
        }
        let used = (0..200)
            .filter(|&i| {
                let m = record(i);
                let chosen = encoder.choose(7, &m, SLOW);
                if chosen {
                    encoder.observe(7, m.len(), m.len() / 3, Duration::from_micros(2));
                }
                chosen
            })
            .count();
        assert!(
            used > 150,
            "used for {used} of 200 messages after the outliers"
        );
        // On a fast link it is tried only now and then.
        let tried = (0..320)
            .filter(|&i| encoder.choose(7, &record(i), FAST))
            .count();
        assert_eq!(tried, 0, "a fast link is not one it could pay on at all");
    }

    #[test]
    fn a_fast_link_collects_nothing() {
        let mut encoder = DictionaryEncoder::default();
        for i in 0..4 * SAMPLES as u64 {
            assert!(!encoder.choose(1, &record(i), FAST));
        }
        assert!(encoder.take_job().is_none());
        assert!(encoder.methods.is_empty());
    }

    #[test]
    fn dictionaries_and_collections_are_bounded() {
        let mut encoder = DictionaryEncoder::default();
        for key in 0..100 {
            encoder.choose(key, &record(key), SLOW);
        }
        assert_eq!(encoder.collecting, MAX_COLLECTING);
        assert_eq!(encoder.methods.len(), MAX_COLLECTING);
        // A peer with small frames gets no dictionaries.
        let mut small = DictionaryEncoder::default();
        small.set_max_size(MIN_TRAINED_SIZE - 1);
        for i in 0..SAMPLES as u64 {
            small.choose(3, &record(i), SLOW);
        }
        assert!(small.take_job().is_none());
    }

    #[test]
    fn useless_dictionaries_are_not_shipped() {
        let mut encoder = DictionaryEncoder::default();
        for seed in 0..SAMPLES as u64 {
            let noise = crate::compress::probe::noise(400, 0x1234_5678_9abc_def1 ^ seed);
            encoder.choose(9, &noise, SLOW);
        }
        let done = encoder.take_job().unwrap().run();
        assert!(done.size().is_err(), "{:?}", done.size());
        assert!(encoder.add(done).is_none());
        assert!(!encoder.choose(9, &record(1), SLOW));
    }

    #[test]
    fn received_dictionaries_are_checked() {
        let mut encoder = DictionaryEncoder::default();
        let (id, data) = trained(&mut encoder, 1);
        let mut decoder = Decompressor::new();
        let refused = |r: Result<(), CompressError>| match r {
            Err(CompressError::Dictionary { detail }) => detail,
            other => panic!("not refused: {other:?}"),
        };
        assert!(refused(decoder.add_dictionary(id + 1, &data)).contains("carries the id"));
        assert!(refused(decoder.add_dictionary(id, b"not a dictionary")).contains("format"));
        let huge = [&data[..], &vec![0u8; MAX_DICTIONARY_SIZE][..]].concat();
        assert!(refused(decoder.add_dictionary(id, &huge)).contains("over the limit"));
        let mut low = data.to_vec();
        low[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(refused(decoder.add_dictionary(7, &low)).contains("below"));
        // Damaged entropy tables: zstd refuses the dictionary.
        let mut damaged = data.to_vec();
        for b in &mut damaged[8..64] {
            *b = 0xff;
        }
        assert!(refused(decoder.add_dictionary(id, &damaged)).contains("zstd refused"));

        decoder.add_dictionary(id, &data).unwrap();
        assert!(refused(decoder.add_dictionary(id, &data)).contains("already"));
        for extra in 1..MAX_DICTIONARIES as u32 {
            let mut other = data.to_vec();
            other[4..8].copy_from_slice(&(id + extra).to_le_bytes());
            decoder.add_dictionary(id + extra, &other).unwrap();
        }
        let mut one_more = data.to_vec();
        let next = id + MAX_DICTIONARIES as u32;
        one_more[4..8].copy_from_slice(&next.to_le_bytes());
        assert!(refused(decoder.add_dictionary(next, &one_more)).contains("at most"));
    }

    #[test]
    fn messages_need_their_dictionary_and_stay_bounded() {
        let mut encoder = DictionaryEncoder::default();
        let (id, data) = trained(&mut encoder, 1);
        let mut out = Vec::new();
        encoder.compress(1, &record(5000), &mut out).unwrap();
        let mut decoder = Decompressor::new();
        match decoder.decompress(Algorithm::ZstdDict, &out, MAX_DICTIONARY_MESSAGE) {
            Err(CompressError::Dictionary { detail }) => {
                assert!(detail.contains("never sent"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        decoder.add_dictionary(id, &data).unwrap();
        // Plain zstd (no dictionary named) is refused as a dictionary message.
        let plain = zstd::bulk::compress(&record(1), 3).unwrap();
        assert!(
            decoder
                .decompress(Algorithm::ZstdDict, &plain, 1 << 20)
                .is_err()
        );
        // A bomb compressed with the dictionary stops at the limit.
        let cdict = CDict::try_create(&data, 3).unwrap();
        let mut bomb = Vec::with_capacity(1 << 20);
        CCtx::create()
            .compress_using_cdict(&mut bomb, &vec![b'a'; 1 << 20], &cdict)
            .unwrap();
        assert!(matches!(
            decoder.decompress(Algorithm::ZstdDict, &bomb, MAX_DICTIONARY_MESSAGE),
            Err(CompressError::TooLarge { .. })
        ));
        assert!(decoder.decompress(Algorithm::ZstdDict, &[], 100).is_err());
        assert!(
            decoder
                .decompress(Algorithm::ZstdDict, &out[..out.len() - 2], 1 << 16)
                .is_err()
        );
    }
}
