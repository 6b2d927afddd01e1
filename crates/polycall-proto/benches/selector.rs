//! Adaptive compression versus static choices, on modeled delivery time.
//!
//! Builds a deterministic mixed corpus (JSON records, random bytes, natural
//! and repetitive text, tiny messages; spread over several method keys and
//! interleaved), then for each link speed runs every strategy over it:
//! never compress, always zstd-1, always zstd-3, always brotli-5, and the
//! adaptive selector learning from a cold start. For each it measures the
//! bytes sent, the compression CPU time (for the selector including its own
//! decisions), the decompression CPU time (every compressed message is
//! actually decompressed), and the modeled delivery time
//! `sum(compress + wire bytes / link speed + decompress)`.
//! A message whose compressed form is not smaller is sent raw, by every
//! strategy. Each measurement is repeated and the median kept.
//!
//! A second corpus is small JSON messages only (100-500 B, eight methods of
//! different shapes), where plain compression gains little: there one more
//! static strategy compresses each method's messages with a zstd dictionary
//! trained from its first messages (those go with plain zstd-3), and the
//! selector may train and use dictionaries too. Dictionary bytes count as
//! sent; training time is reported apart (it runs off the delivery path).
//!
//! Run with `cargo bench -p polycall-proto --bench selector [-- --quick]`.
//! Results also go to `target/bench/selector.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use polycall_core::ContentType;
use polycall_proto::compress::{
    AdaptiveCompressor, Algorithm, Choice, Compressor, Decompressor, SelectorConfig, dictionary,
};

/// The link speeds evaluated, in bytes per second, with their labels.
const SPEEDS: [(f64, &str); 2] = [(12.5e6, "100 Mbit/s"), (1.25e9, "10 Gbit/s")];

/// The static strategies.
const STATIC: [(&str, Choice); 4] = [
    ("never", Choice::NONE),
    (
        "always-zstd-1",
        Choice {
            algorithm: Algorithm::Zstd,
            level: 1,
        },
    ),
    (
        "always-zstd-3",
        Choice {
            algorithm: Algorithm::Zstd,
            level: 3,
        },
    ),
    (
        "always-brotli-5",
        Choice {
            algorithm: Algorithm::Brotli,
            level: 5,
        },
    ),
];

const ADAPTIVE: &str = "adaptive";
const DICTIONARY: &str = "zstd-3 + dictionary";

/// Dictionaries must make small JSON messages at least this much smaller than
/// the best static choice without them.
const DICTIONARY_GAIN: f64 = 2.0;

/// The selector may be at most this much slower than the best static choice.
const TOLERANCE: f64 = 1.10;

// ---------------------------------------------------------------------------
// A small deterministic PRNG (SplitMix64).

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `lo..=hi`.
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        ((l + self.unit() * (h - l)).exp() as usize).clamp(lo, hi)
    }

    /// Roughly Zipf-distributed index below `n` (small ones most common).
    fn zipf(&mut self, n: usize) -> usize {
        let u = self.unit();
        (((n as f64 + 1.0).powf(u) - 1.0) as usize).min(n - 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The corpus.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Json,
    Random,
    Text,
    Tiny,
    Small,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Random => "random",
            Kind::Text => "text",
            Kind::Tiny => "tiny",
            Kind::Small => "small-json",
        }
    }
}

struct Message {
    key: u64,
    kind: Kind,
    content_type: ContentType,
    payload: Bytes,
}

/// A vocabulary of pseudo-words built from syllables.
fn vocabulary(rng: &mut Rng, words: usize) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "an", "er", "in", "on", "st", "th", "ch",
        "re", "de", "co", "pro", "ex", "ion", "ment", "al", "ly",
    ];
    (0..words)
        .map(|_| {
            let parts = 1 + rng.below(3) as usize;
            (0..parts).map(|_| rng.pick(&SYLLABLES)).collect::<String>()
        })
        .collect()
}

/// Natural-ish prose: Zipf-distributed words, sentences, paragraphs.
fn prose(rng: &mut Rng, vocab: &[String], len: usize) -> String {
    let mut out = String::with_capacity(len + 64);
    let mut sentence = 0;
    while out.len() < len {
        let word = &vocab[rng.zipf(vocab.len())];
        if sentence == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push_str(word);
        }
        sentence += 1;
        if sentence > 6 && rng.below(8) == 0 {
            out.push_str(if rng.below(4) == 0 { ",\n" } else { ". " });
            sentence = 0;
            if rng.below(6) == 0 {
                out.push('\n');
            }
        } else {
            out.push(' ');
        }
    }
    out.truncate(len);
    out
}

/// Text made of a few paragraphs repeated with small changes, as templated
/// documents and logs are.
fn repetitive_text(rng: &mut Rng, vocab: &[String], len: usize) -> String {
    let paragraphs: Vec<String> = (0..4)
        .map(|_| {
            let len = 200 + rng.below(400) as usize;
            prose(rng, vocab, len)
        })
        .collect();
    let mut out = String::with_capacity(len + 1024);
    while out.len() < len {
        let p = &paragraphs[rng.below(paragraphs.len() as u64) as usize];
        out.push_str(&format!("[{}] ", 100_000 + rng.below(900_000)));
        out.push_str(p);
        out.push('\n');
    }
    out.truncate(len);
    out
}

/// A JSON array of log records, about `len` bytes.
fn json_logs(rng: &mut Rng, vocab: &[String], len: usize) -> String {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "ERROR"];
    const SERVICES: [&str; 5] = ["api-gateway", "billing", "auth", "search", "storage"];
    const ROUTES: [&str; 4] = ["/v1/users", "/v1/orders", "/v2/search", "/v1/invoices"];
    let mut out = String::from("[");
    while out.len() < len {
        let msg_len = 20 + rng.below(80) as usize;
        let msg = prose(rng, vocab, msg_len).replace('\n', " ");
        out.push_str(&format!(
            r#"{{"ts":"2025-03-{:02}T{:02}:{:02}:{:02}.{:03}Z","level":"{}","service":"{}","trace_id":"{:016x}","route":"{}/{}","status":{},"latency_ms":{:.2},"msg":"{}"}},"#,
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            rng.pick(&LEVELS),
            rng.pick(&SERVICES),
            rng.next_u64(),
            rng.pick(&ROUTES),
            rng.below(100_000),
            [200, 200, 200, 201, 404, 500][rng.below(6) as usize],
            rng.unit() * 900.0,
            msg
        ));
    }
    out.truncate(len.saturating_sub(1));
    out.push(']');
    out
}

/// A JSON array of metric samples: numbers more than words.
fn json_metrics(rng: &mut Rng, len: usize) -> String {
    const NAMES: [&str; 6] = [
        "cpu.user",
        "cpu.system",
        "mem.rss",
        "net.rx_bytes",
        "net.tx_bytes",
        "disk.iops",
    ];
    let mut out = String::from("[");
    while out.len() < len {
        let values: Vec<String> = (0..4 + rng.below(8))
            .map(|_| format!("{:.3}", rng.unit() * 10f64.powi(rng.below(6) as i32)))
            .collect();
        out.push_str(&format!(
            r#"{{"name":"{}","host":"node-{:03}","ts":{},"values":[{}],"tags":{{"region":"eu-west-{}","az":"{}"}}}},"#,
            rng.pick(&NAMES),
            rng.below(200),
            1_740_000_000 + rng.below(1_000_000),
            values.join(","),
            1 + rng.below(3),
            rng.pick(&["a", "b", "c"])
        ));
    }
    out.truncate(len.saturating_sub(1));
    out.push(']');
    out
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn tiny_json(rng: &mut Rng, len: usize) -> String {
    let mut out = format!(
        r#"{{"id":{},"ok":{},"n":{}}}"#,
        rng.below(1_000_000),
        rng.below(2) == 0,
        rng.below(1000)
    );
    while out.len() < len {
        out.insert_str(1, r#""x":0,"#);
    }
    out
}

/// The corpus: `scale` 4 is the full one (about 6 MB), 1 the quick one.
fn corpus(scale: usize) -> Vec<Message> {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let vocab = vocabulary(&mut rng, 3000);
    let mut messages = Vec::new();
    let mut add = |key: u64, kind: Kind, content_type: ContentType, payload: Vec<u8>| {
        messages.push(Message {
            key,
            kind,
            content_type,
            payload: Bytes::from(payload),
        });
    };
    for _ in 0..40 * scale {
        let len = rng.log_uniform(200, 64 * 1024);
        add(
            1,
            Kind::Json,
            ContentType::Json,
            json_logs(&mut rng, &vocab, len).into_bytes(),
        );
        let len = rng.log_uniform(200, 64 * 1024);
        add(
            2,
            Kind::Json,
            ContentType::Json,
            json_metrics(&mut rng, len).into_bytes(),
        );
    }
    for _ in 0..5 * scale {
        let len = rng.log_uniform(1024, 256 * 1024);
        add(
            3,
            Kind::Random,
            ContentType::Raw,
            random_bytes(&mut rng, len),
        );
    }
    for _ in 0..2 * scale {
        let len = rng.log_uniform(1024, 1024 * 1024);
        add(
            4,
            Kind::Text,
            ContentType::Raw,
            prose(&mut rng, &vocab, len).into_bytes(),
        );
        let len = rng.log_uniform(1024, 1024 * 1024);
        add(
            5,
            Kind::Text,
            ContentType::Raw,
            repetitive_text(&mut rng, &vocab, len).into_bytes(),
        );
    }
    for _ in 0..100 * scale {
        let len = rng.log_uniform(16, 128);
        add(
            6,
            Kind::Tiny,
            ContentType::Json,
            tiny_json(&mut rng, len).into_bytes(),
        );
        let len = rng.log_uniform(16, 128);
        add(7, Kind::Tiny, ContentType::Raw, random_bytes(&mut rng, len));
    }
    // Interleave (Fisher-Yates).
    for i in (1..messages.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        messages.swap(i, j);
    }
    messages
}

/// Small JSON messages (100-500 B) of eight methods, each of its own shape,
/// interleaved: 400 of each method per `scale`.
fn small_json(scale: usize) -> Vec<Message> {
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let vocab = vocabulary(&mut rng, 800);
    let mut messages = Vec::new();
    for _ in 0..400 * scale {
        for key in 11..19u64 {
            let target = 100 + rng.below(400) as usize;
            let text = small_record(&mut rng, &vocab, key, target);
            messages.push(Message {
                key,
                kind: Kind::Small,
                content_type: ContentType::Json,
                payload: Bytes::from(text.into_bytes()),
            });
        }
    }
    for i in (1..messages.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        messages.swap(i, j);
    }
    messages
}

/// One record of method `key`, cut or padded (with a note) to about `target`
/// bytes and kept valid JSON.
fn small_record(rng: &mut Rng, vocab: &[String], key: u64, target: usize) -> String {
    const STATUS: [&str; 4] = ["pending", "paid", "shipped", "cancelled"];
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "ERROR"];
    let head = match key {
        11 => format!(
            r#"{{"order_id":"ord_{:08}","customer":"cus_{:06}","status":"{}","currency":"EUR","total_cents":{},"items":{},"created_at":"2025-03-{:02}T{:02}:{:02}:00Z""#,
            rng.below(100_000_000),
            rng.below(1_000_000),
            rng.pick(&STATUS),
            rng.below(100_000),
            1 + rng.below(9),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60)
        ),
        12 => format!(
            r#"{{"ts":"2025-03-{:02}T{:02}:{:02}:{:02}Z","level":"{}","service":"billing","trace_id":"{:016x}","route":"/v1/invoices/{}","status":{},"latency_ms":{:.1}"#,
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.pick(&LEVELS),
            rng.next_u64(),
            rng.below(100_000),
            [200, 200, 201, 404, 500][rng.below(5) as usize],
            rng.unit() * 900.0
        ),
        13 => format!(
            r#"{{"metric":"http.server.duration","host":"node-{:03}","region":"eu-west-{}","unit":"ms","count":{},"sum":{:.2},"min":{:.2},"max":{:.2}"#,
            rng.below(200),
            1 + rng.below(3),
            rng.below(10_000),
            rng.unit() * 1e5,
            rng.unit(),
            rng.unit() * 1e3
        ),
        14 => format!(
            r#"{{"event":"page_view","user_id":"usr_{:07}","session":"{:012x}","url":"https://shop.example.com/products/{}","referrer":"https://www.example.org/","device":"{}","country":"{}""#,
            rng.below(10_000_000),
            rng.next_u64() >> 16,
            rng.below(50_000),
            rng.pick(&["mobile", "desktop", "tablet"]),
            rng.pick(&["DE", "FR", "NL", "ES", "IT"])
        ),
        15 => format!(
            r#"{{"user":{{"id":{},"name":"{} {}","email":"user{}@example.com","roles":["{}"],"verified":{}}},"action":"login","ip":"10.{}.{}.{}""#,
            rng.below(1_000_000),
            vocab[rng.zipf(vocab.len())],
            vocab[rng.zipf(vocab.len())],
            rng.below(1_000_000),
            rng.pick(&["admin", "dev", "viewer"]),
            rng.below(2) == 0,
            rng.below(256),
            rng.below(256),
            rng.below(256)
        ),
        16 => format!(
            r#"{{"sku":"SKU-{:06}","warehouse":"wh-{}","available":{},"reserved":{},"reorder_level":{},"updated_by":"inventory-sync","updated_at":{}"#,
            rng.below(1_000_000),
            rng.pick(&["ams", "fra", "mad"]),
            rng.below(5000),
            rng.below(200),
            rng.below(100),
            1_740_000_000 + rng.below(1_000_000)
        ),
        17 => format!(
            r#"{{"payment_id":"pay_{:010}","method":"{}","amount":{{"value":{},"currency":"{}"}},"status":"{}","risk_score":{:.3},"3ds":{}"#,
            rng.below(10_000_000_000),
            rng.pick(&["card", "sepa_debit", "ideal"]),
            rng.below(100_000),
            rng.pick(&["EUR", "USD", "GBP"]),
            rng.pick(&["authorized", "captured", "failed"]),
            rng.unit(),
            rng.below(2) == 0
        ),
        _ => format!(
            r#"{{"job":"report-export","job_id":"{:016x}","state":"{}","attempt":{},"queue":"default","worker":"worker-{:02}","progress":{:.2}"#,
            rng.next_u64(),
            rng.pick(&["queued", "running", "done", "failed"]),
            1 + rng.below(3),
            rng.below(32),
            rng.unit()
        ),
    };
    // Longer records carry a list of line items, as orders and batches do.
    let mut out = head;
    let mut items = Vec::new();
    while out.len() + 12 + items.iter().map(|i: &String| i.len() + 1).sum::<usize>() < target {
        items.push(format!(
            r#"{{"line":{},"sku":"SKU-{:06}","name":"{}","qty":{},"unit_cents":{}}}"#,
            items.len() + 1,
            rng.below(1_000_000),
            vocab[rng.zipf(vocab.len())],
            1 + rng.below(5),
            rng.below(10_000)
        ));
    }
    if !items.is_empty() {
        out.push_str(&format!(r#","lines":[{}]"#, items.join(",")));
    }
    out.push('}');
    out
}

// ---------------------------------------------------------------------------
// Running the strategies.

/// One strategy's run over the corpus.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Bytes on the wire.
    bytes: u64,
    /// Compression CPU time, ns.
    compress_ns: f64,
    /// Decompression CPU time, ns.
    decompress_ns: f64,
    /// Dictionary training CPU time, ns (off the delivery path).
    training_ns: f64,
    /// Per message kind and choice (algorithm id, level, whether the output
    /// was not smaller), how many messages (adaptive only).
    picks: BTreeMap<(Kind, u8, i32, bool), usize>,
    /// The same totals per message kind.
    by_kind: BTreeMap<Kind, Totals>,
}

#[derive(Clone, Debug, Default)]
struct Totals {
    bytes: u64,
    compress_ns: f64,
    decompress_ns: f64,
}

impl Totals {
    fn delivery_ns(&self, link: f64) -> f64 {
        self.compress_ns + self.bytes as f64 / link * 1e9 + self.decompress_ns
    }
}

impl Run {
    fn delivery_ns(&self, link: f64) -> f64 {
        self.compress_ns + self.wire_ns(link) + self.decompress_ns
    }

    fn wire_ns(&self, link: f64) -> f64 {
        self.bytes as f64 / link * 1e9
    }
}

/// What a strategy sends for one message: the algorithm, the bytes, and a
/// dictionary it ships first, if any.
struct Sent {
    algorithm: Algorithm,
    wire: Bytes,
    shipped: Option<(u32, Bytes)>,
    /// What the strategy chose (the selector's picks), and whether its output
    /// was not smaller.
    choice: Choice,
}

/// A way to send the corpus's messages.
trait Sender {
    /// Encodes `m`. Dictionary training it needs runs inside and is reported
    /// apart ([`Sender::take_training_ns`]).
    fn send(&mut self, m: &Message) -> Sent;
    /// Training time since the last call, ns.
    fn take_training_ns(&mut self) -> f64 {
        0.0
    }
}

/// A static choice for every message (one not smaller goes raw).
struct Static {
    choice: Choice,
    compressor: Compressor,
    scratch: Vec<u8>,
}

impl Sender for Static {
    fn send(&mut self, m: &Message) -> Sent {
        let raw = |choice| Sent {
            algorithm: Algorithm::None,
            wire: m.payload.clone(),
            shipped: None,
            choice,
        };
        if self.choice.algorithm == Algorithm::None {
            return raw(Choice::NONE);
        }
        self.scratch.clear();
        self.compressor
            .compress(self.choice, &m.payload, &mut self.scratch)
            .expect("compresses");
        if self.scratch.len() >= m.payload.len() {
            return raw(self.choice);
        }
        Sent {
            algorithm: self.choice.algorithm,
            wire: Bytes::copy_from_slice(&self.scratch),
            shipped: None,
            choice: self.choice,
        }
    }
}

/// The selector, learning from a cold start; dictionary training jobs run as
/// they come (timed apart) and the dictionaries they give are shipped.
struct Adaptive {
    encoder: AdaptiveCompressor,
    training_ns: f64,
}

impl Sender for Adaptive {
    fn send(&mut self, m: &Message) -> Sent {
        let (algorithm, wire) =
            self.encoder
                .encode(m.key, m.content_type, &m.payload, &Algorithm::ALL);
        let mut shipped = None;
        if let Some(job) = self.encoder.take_dictionary_job() {
            let start = Instant::now();
            let trained = job.run();
            self.training_ns += start.elapsed().as_nanos() as f64;
            shipped = self.encoder.add_dictionary(trained);
        }
        Sent {
            algorithm,
            wire,
            shipped,
            choice: self.encoder.last_choice(),
        }
    }

    fn take_training_ns(&mut self) -> f64 {
        std::mem::take(&mut self.training_ns)
    }
}

/// zstd-3 with a dictionary per method, trained from the method's first
/// `dictionary::SAMPLES` messages (sent with plain zstd-3 meanwhile), as the
/// protocol's dictionaries are: same size, same level, the same id range.
struct WithDictionaries {
    plain: zstd::bulk::Compressor<'static>,
    samples: HashMap<u64, Vec<Bytes>>,
    dictionaries: HashMap<u64, zstd::bulk::Compressor<'static>>,
    next_id: u32,
    training_ns: f64,
}

impl WithDictionaries {
    const LEVEL: i32 = 3;

    fn new() -> Self {
        WithDictionaries {
            plain: zstd::bulk::Compressor::new(Self::LEVEL).expect("a zstd context"),
            samples: HashMap::new(),
            dictionaries: HashMap::new(),
            next_id: dictionary::FIRST_DICTIONARY_ID,
            training_ns: 0.0,
        }
    }
}

impl Sender for WithDictionaries {
    fn send(&mut self, m: &Message) -> Sent {
        let (algorithm, out) = match self.dictionaries.get_mut(&m.key) {
            Some(c) => (Algorithm::ZstdDict, c.compress(&m.payload)),
            None => (Algorithm::Zstd, self.plain.compress(&m.payload)),
        };
        let out = out.expect("compresses");
        let choice = Choice {
            algorithm,
            level: Self::LEVEL,
        };
        let (algorithm, wire) = if out.len() < m.payload.len() {
            (algorithm, Bytes::from(out))
        } else {
            (Algorithm::None, m.payload.clone())
        };
        let mut shipped = None;
        if !self.dictionaries.contains_key(&m.key) {
            let kept = self.samples.entry(m.key).or_default();
            kept.push(m.payload.clone());
            if kept.len() >= dictionary::SAMPLES {
                let start = Instant::now();
                let mut dict =
                    zstd::dict::from_samples(kept, dictionary::TRAINED_SIZE).expect("trains");
                dict[4..8].copy_from_slice(&self.next_id.to_le_bytes());
                let compressor =
                    zstd::bulk::Compressor::with_dictionary(Self::LEVEL, &dict).expect("loads");
                self.training_ns += start.elapsed().as_nanos() as f64;
                self.dictionaries.insert(m.key, compressor);
                shipped = Some((self.next_id, Bytes::from(dict)));
                self.next_id += 1;
            }
        }
        Sent {
            algorithm,
            wire,
            shipped,
            choice,
        }
    }

    fn take_training_ns(&mut self) -> f64 {
        std::mem::take(&mut self.training_ns)
    }
}

/// Runs `sender` over the corpus: all messages encoded first (the corpus
/// warmed up in cache first), the whole loop timed at once (per-message clock reads would cost as much as deciding not
/// to compress a small message), less the training time; then every message
/// delivered (decompressed, timed, and checked). A second pass of a fresh
/// sender, timed message by message, splits the compression time by kind.
fn run(corpus: &[Message], make: &dyn Fn() -> Box<dyn Sender>) -> Run {
    let mut run = Run::default();
    let mut sender = make();
    let mut sent = Vec::with_capacity(corpus.len());
    // A sender's payload was just made: in cache, as the corpus is after this.
    for m in corpus {
        std::hint::black_box(m.payload.clone());
    }
    let start = Instant::now();
    for m in corpus {
        sent.push(sender.send(m));
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    run.training_ns = sender.take_training_ns();
    run.compress_ns = (elapsed - run.training_ns).max(0.0);

    let mut decompressor = Decompressor::new();
    for (m, s) in corpus.iter().zip(&sent) {
        let kind = run.by_kind.entry(m.kind).or_default();
        if let Some((id, data)) = &s.shipped {
            run.bytes += data.len() as u64;
            kind.bytes += data.len() as u64;
            decompressor
                .add_dictionary(*id, data)
                .expect("a valid dictionary");
        }
        let kind = run.by_kind.entry(m.kind).or_default();
        run.bytes += s.wire.len() as u64;
        kind.bytes += s.wire.len() as u64;
        let not_smaller = s.algorithm == Algorithm::None && s.choice != Choice::NONE;
        *run.picks
            .entry((m.kind, s.choice.algorithm.id(), s.choice.level, not_smaller))
            .or_default() += 1;
        if s.algorithm == Algorithm::None {
            assert_eq!(s.wire, m.payload);
            continue;
        }
        let start = Instant::now();
        let back = decompressor
            .decompress(s.algorithm, &s.wire, m.payload.len())
            .expect("decompresses");
        let ns = timed(start);
        run.decompress_ns += ns;
        run.by_kind.entry(m.kind).or_default().decompress_ns += ns;
        assert_eq!(back, m.payload.as_ref(), "round trip");
    }

    // The split by kind.
    let mut sender = make();
    let mut per_kind: BTreeMap<Kind, f64> = BTreeMap::new();
    for m in corpus {
        let start = Instant::now();
        std::hint::black_box(sender.send(m));
        let ns = (timed(start) - sender.take_training_ns()).max(0.0);
        *per_kind.entry(m.kind).or_default() += ns;
    }
    let sum: f64 = per_kind.values().sum::<f64>();
    for (kind, ns) in per_kind {
        let share = if sum > 0.0 { ns / sum } else { 0.0 };
        run.by_kind.entry(kind).or_default().compress_ns = run.compress_ns * share.min(1.0);
    }
    run
}

/// Nanoseconds since `start`, less what reading the clock twice costs.
fn timed(start: Instant) -> f64 {
    (start.elapsed().as_nanos() as f64 - clock_overhead_ns()).max(0.0)
}

/// The median cost of `Instant::now()` followed by `elapsed()`, measured once.
fn clock_overhead_ns() -> f64 {
    static OVERHEAD: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let mut samples: Vec<f64> = (0..10_001)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(&start);
                start.elapsed().as_nanos() as f64
            })
            .collect();
        median(&mut samples)
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The medians of one strategy at one speed.
struct Summary {
    name: String,
    bytes: f64,
    compress_ms: f64,
    decompress_ms: f64,
    wire_ms: f64,
    delivery_ms: f64,
    training_ms: f64,
}

fn summarize(name: &str, runs: &[Run], link: f64) -> Summary {
    let pick = |f: &dyn Fn(&Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Summary {
        name: name.to_string(),
        bytes: pick(&|r| r.bytes as f64),
        compress_ms: pick(&|r| r.compress_ns) / 1e6,
        decompress_ms: pick(&|r| r.decompress_ns) / 1e6,
        wire_ms: pick(&|r| r.wire_ns(link)) / 1e6,
        delivery_ms: pick(&|r| r.delivery_ns(link)) / 1e6,
        training_ms: pick(&|r| r.training_ns) / 1e6,
    }
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../../target")
}

fn main() {
    // cargo bench passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|a| a == "--quick");
    // `--verbose` adds per-kind details.
    let verbose = std::env::args().any(|a| a == "--verbose");
    let (scale, repeats) = if quick { (1, 3) } else { (4, 7) };
    println!(
        "# adaptive compression selector{}\n",
        if quick { " (quick)" } else { "" }
    );
    let (mixed_ok, mixed) = evaluate("mixed corpus", &corpus(scale), repeats, verbose, false);
    // Small messages are cheap to run: the quick run takes the whole corpus
    // too (dictionaries need a method's many messages to repay their bytes).
    let (small_ok, small) = evaluate(
        "small JSON messages",
        &small_json(4),
        repeats,
        verbose,
        true,
    );
    let verdict_ok = mixed_ok && small_ok;
    if verdict_ok {
        println!(
            "VERDICT: PASS - the selector is within {:.0}% of the best static choice at both speeds on both corpora, and dictionaries send small JSON in {:.0}x fewer bytes or better",
            (TOLERANCE - 1.0) * 100.0,
            DICTIONARY_GAIN
        );
    } else {
        println!("VERDICT: MISS - see the MISS lines above");
    }

    let report = serde_json::json!({
        "quick": quick,
        "repeats": repeats,
        "mixed": mixed,
        "small_json": small,
        "tolerance": TOLERANCE,
        "dictionary_gain_target": DICTIONARY_GAIN,
        "pass": verdict_ok,
    });
    let dir = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let path = dir.join("selector.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("serializes"),
    ) {
        Ok(()) => println!("results written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

/// Runs every strategy over `corpus` (with the dictionary strategy when
/// `dictionaries`), prints the tables and returns whether the targets hold
/// and the figures as JSON.
fn evaluate(
    title: &str,
    corpus: &[Message],
    repeats: usize,
    verbose: bool,
    dictionaries: bool,
) -> (bool, serde_json::Value) {
    let total: usize = corpus.iter().map(|m| m.payload.len()).sum();
    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    for m in corpus {
        let e = by_kind.entry(m.kind).or_default();
        e.0 += 1;
        e.1 += m.payload.len();
    }
    println!("# {title}\n");
    println!(
        "corpus: {} messages, {:.2} MB; median of {} runs after a warm-up run; clock reads ({:.0} ns a pair) are subtracted from timings",
        corpus.len(),
        total as f64 / 1e6,
        repeats,
        clock_overhead_ns()
    );
    for (kind, (count, bytes)) in &by_kind {
        println!(
            "  {:10} {:5} messages {:9.1} KB",
            kind.name(),
            count,
            *bytes as f64 / 1e3
        );
    }
    println!();

    // The static strategies, the dictionary one when asked for.
    let mut statics: Vec<&str> = STATIC.iter().map(|&(name, _)| name).collect();
    if dictionaries {
        statics.push(DICTIONARY);
    }
    let run_one = |i: usize| match STATIC.get(i) {
        Some(&(_, choice)) => run(corpus, &|| {
            Box::new(Static {
                choice,
                compressor: Compressor::new(),
                scratch: Vec::new(),
            })
        }),
        None => run(corpus, &|| Box::new(WithDictionaries::new())),
    };

    // Warm-up, then the measured runs. Static runs do not depend on the link
    // speed; the selector's do.
    let mut static_runs: Vec<Vec<Run>> = vec![Vec::new(); statics.len()];
    let mut adaptive_runs: Vec<Vec<Run>> = vec![Vec::new(); SPEEDS.len()];
    for rep in 0..=repeats {
        let runs: Vec<Run> = (0..statics.len()).map(run_one).collect();
        let adaptives: Vec<Run> = SPEEDS
            .iter()
            .map(|&(link, _)| {
                run(corpus, &|| {
                    Box::new(Adaptive {
                        encoder: AdaptiveCompressor::new(
                            SelectorConfig::default().link_bytes_per_sec(link),
                        ),
                        training_ns: 0.0,
                    })
                })
            })
            .collect();
        if rep == 0 {
            continue;
        }
        for (i, run) in runs.into_iter().enumerate() {
            static_runs[i].push(run);
        }
        for (i, run) in adaptives.into_iter().enumerate() {
            adaptive_runs[i].push(run);
        }
    }

    let mut verdict_ok = true;
    let mut json_speeds = Vec::new();
    for (s, &(link, label)) in SPEEDS.iter().enumerate() {
        let mut rows: Vec<Summary> = statics
            .iter()
            .enumerate()
            .map(|(i, name)| summarize(name, &static_runs[i], link))
            .collect();
        rows.push(summarize(ADAPTIVE, &adaptive_runs[s], link));
        let best_static = rows[..statics.len()]
            .iter()
            .min_by(|a, b| a.delivery_ms.total_cmp(&b.delivery_ms))
            .expect("static strategies");
        let best_name = best_static.name.clone();
        let best_ms = best_static.delivery_ms;
        let adaptive = &rows[statics.len()];
        let ratio = adaptive.delivery_ms / best_ms;
        let ok = ratio <= TOLERANCE;
        verdict_ok &= ok;

        println!("## {title}: {label} ({link:.3e} bytes/s)\n");
        println!(
            "| strategy | bytes sent | ratio | compress ms | decompress ms | wire ms | delivery ms | vs best static | training ms (off the path) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {:.0} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} |",
                row.name,
                row.bytes,
                total as f64 / row.bytes,
                row.compress_ms,
                row.decompress_ms,
                row.wire_ms,
                row.delivery_ms,
                row.delivery_ms / best_ms,
                row.training_ms
            );
        }
        if dictionaries && s == 0 {
            // Bytes: the dictionary strategy against the best static choice
            // without dictionaries (speed does not change static bytes).
            let plain = rows[..STATIC.len()]
                .iter()
                .filter(|r| r.name != "never")
                .min_by(|a, b| a.bytes.total_cmp(&b.bytes))
                .expect("static strategies");
            let with = &rows[STATIC.len()];
            let gain = plain.bytes / with.bytes;
            let adaptive_gain = plain.bytes / adaptive.bytes;
            let ok = gain >= DICTIONARY_GAIN;
            verdict_ok &= ok;
            println!(
                "\ndictionaries: {gain:.2}x fewer bytes than {} ({:.0} against {:.0}; target {DICTIONARY_GAIN:.0}x: {}); the selector at {label}: {adaptive_gain:.2}x",
                plain.name,
                with.bytes,
                plain.bytes,
                if ok { "PASS" } else { "MISS" }
            );
        }
        // Delivery time per kind of message.
        let kinds: Vec<Kind> = by_kind.keys().copied().collect();
        println!(
            "\n| delivery ms by kind | {} |",
            kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---:|".repeat(kinds.len()));
        let all_runs: Vec<(&str, &Vec<Run>)> = statics
            .iter()
            .enumerate()
            .map(|(i, &name)| (name, &static_runs[i]))
            .chain([(ADAPTIVE, &adaptive_runs[s])])
            .collect();
        for (name, runs) in &all_runs {
            let cells: Vec<String> = kinds
                .iter()
                .map(|k| {
                    let mut v: Vec<f64> = runs
                        .iter()
                        .map(|r| r.by_kind.get(k).map_or(0.0, |t| t.delivery_ns(link)))
                        .collect();
                    format!("{:.2}", median(&mut v) / 1e6)
                })
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        if verbose {
            println!(
                "\n| bytes / compress ms by kind | {} |",
                kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            println!("|---|{}", "---:|".repeat(kinds.len()));
            for (name, runs) in &all_runs {
                let cells: Vec<String> = kinds
                    .iter()
                    .map(|k| {
                        let mut b: Vec<f64> = runs
                            .iter()
                            .map(|r| r.by_kind.get(k).map_or(0.0, |t| t.bytes as f64))
                            .collect();
                        let mut c: Vec<f64> = runs
                            .iter()
                            .map(|r| r.by_kind.get(k).map_or(0.0, |t| t.compress_ns))
                            .collect();
                        let mut d: Vec<f64> = runs
                            .iter()
                            .map(|r| r.by_kind.get(k).map_or(0.0, |t| t.decompress_ns))
                            .collect();
                        format!(
                            "{:.0} / {:.2} / {:.2}",
                            median(&mut b),
                            median(&mut c) / 1e6,
                            median(&mut d) / 1e6
                        )
                    })
                    .collect();
                println!("| {name} | {} |", cells.join(" | "));
            }
        }
        // What the selector did, in its median run.
        let mut picks: BTreeMap<(Kind, u8, i32, bool), Vec<f64>> = BTreeMap::new();
        for run in &adaptive_runs[s] {
            for (k, v) in &run.picks {
                picks.entry(*k).or_default().push(*v as f64);
            }
        }
        let picks: Vec<String> = picks
            .into_iter()
            .map(|((kind, id, level, not_smaller), mut v)| {
                let choice = Choice {
                    algorithm: Algorithm::from_id(id).expect("a known id"),
                    level,
                };
                let note = if not_smaller { "(not smaller)" } else { "" };
                format!("{} {choice}{note}: {:.0}", kind.name(), median(&mut v))
            })
            .collect();
        println!(
            "\nselector's algorithms (median count): {}",
            picks.join(", ")
        );
        let line =
            format!("selector vs best static at {label}: {ratio:.3} (best static: {best_name})");
        println!("\n{line}");
        if !ok {
            println!(
                "MISS at {label}: the selector is {:.1}% slower than {best_name}",
                (ratio - 1.0) * 100.0
            );
        }
        println!();

        json_speeds.push(serde_json::json!({
            "label": label,
            "link_bytes_per_sec": link,
            "best_static": best_name,
            "selector_vs_best_static": ratio,
            "within_tolerance": ok,
            "strategies": rows.iter().map(|r| serde_json::json!({
                "training_ms": r.training_ms,
                "name": r.name,
                "bytes_sent": r.bytes,
                "compress_ms": r.compress_ms,
                "decompress_ms": r.decompress_ms,
                "wire_ms": r.wire_ms,
                "delivery_ms": r.delivery_ms,
            })).collect::<Vec<_>>(),
        }));
    }

    (
        verdict_ok,
        serde_json::json!({
            "messages": corpus.len(),
            "bytes": total,
            "kinds": by_kind.iter().map(|(k, (c, b))| serde_json::json!({
                "kind": k.name(), "messages": c, "bytes": b,
            })).collect::<Vec<_>>(),
            "speeds": json_speeds,
        }),
    )
}
