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
//! Run with `cargo bench -p polycall-proto --bench selector [-- --quick]`.
//! Results also go to `target/bench/selector.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use polycall_core::ContentType;
use polycall_proto::compress::{
    AdaptiveCompressor, Algorithm, Choice, Compressor, Decompressor, SelectorConfig,
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
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Random => "random",
            Kind::Text => "text",
            Kind::Tiny => "tiny",
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
    /// Per message kind and choice, how many messages (adaptive only).
    picks: BTreeMap<(Kind, String), usize>,
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

/// Decompresses `wire` (timed), checks it, and records the message.
fn deliver(
    run: &mut Run,
    decompressor: &mut Decompressor,
    kind: Kind,
    algorithm: Algorithm,
    wire: &Bytes,
    original: &Bytes,
) {
    run.bytes += wire.len() as u64;
    run.by_kind.entry(kind).or_default().bytes += wire.len() as u64;
    if algorithm == Algorithm::None {
        assert_eq!(wire, original);
        return;
    }
    let start = Instant::now();
    let back = decompressor
        .decompress(algorithm, wire, original.len())
        .expect("decompresses");
    let ns = start.elapsed().as_nanos() as f64;
    run.decompress_ns += ns;
    run.by_kind.entry(kind).or_default().decompress_ns += ns;
    assert_eq!(back, original.as_ref(), "round trip");
}

fn run_static(corpus: &[Message], choice: Choice) -> Run {
    let mut run = Run::default();
    let mut compressor = Compressor::new();
    let mut decompressor = Decompressor::new();
    let mut scratch = Vec::new();
    for m in corpus {
        if choice.algorithm == Algorithm::None {
            deliver(
                &mut run,
                &mut decompressor,
                m.kind,
                Algorithm::None,
                &m.payload,
                &m.payload,
            );
            continue;
        }
        let start = Instant::now();
        scratch.clear();
        compressor
            .compress(choice, &m.payload, &mut scratch)
            .expect("compresses");
        let (algorithm, wire) = if scratch.len() < m.payload.len() {
            (choice.algorithm, Bytes::copy_from_slice(&scratch))
        } else {
            (Algorithm::None, m.payload.clone())
        };
        let ns = start.elapsed().as_nanos() as f64;
        run.compress_ns += ns;
        run.by_kind.entry(m.kind).or_default().compress_ns += ns;
        deliver(
            &mut run,
            &mut decompressor,
            m.kind,
            algorithm,
            &wire,
            &m.payload,
        );
    }
    run
}

fn run_adaptive(corpus: &[Message], link: f64, dump: bool) -> Run {
    let mut run = Run::default();
    let mut encoder = AdaptiveCompressor::new(SelectorConfig::default().link_bytes_per_sec(link));
    let mut decompressor = Decompressor::new();
    for m in corpus {
        let start = Instant::now();
        let (algorithm, wire) = encoder.encode(m.key, m.content_type, &m.payload, &Algorithm::ALL);
        let ns = start.elapsed().as_nanos() as f64;
        run.compress_ns += ns;
        run.by_kind.entry(m.kind).or_default().compress_ns += ns;
        let choice = encoder.last_choice();
        let label = if algorithm == Algorithm::None && choice != Choice::NONE {
            format!("{choice}(not smaller)")
        } else {
            choice.to_string()
        };
        *run.picks.entry((m.kind, label)).or_default() += 1;
        deliver(
            &mut run,
            &mut decompressor,
            m.kind,
            algorithm,
            &wire,
            &m.payload,
        );
    }
    if dump {
        eprintln!(
            "selector state at {link:.3e} B/s: {:#?}",
            encoder.selector()
        );
    }
    run
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
    // `--verbose` adds per-kind details, and the selector's final state on
    // stderr.
    let verbose = std::env::args().any(|a| a == "--verbose");
    let (scale, repeats) = if quick { (1, 3) } else { (4, 7) };
    let corpus = corpus(scale);
    let total: usize = corpus.iter().map(|m| m.payload.len()).sum();
    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    for m in &corpus {
        let e = by_kind.entry(m.kind).or_default();
        e.0 += 1;
        e.1 += m.payload.len();
    }
    println!(
        "# adaptive compression selector{}\n",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "corpus: {} messages, {:.2} MB; median of {} runs after a warm-up run",
        corpus.len(),
        total as f64 / 1e6,
        repeats
    );
    for (kind, (count, bytes)) in &by_kind {
        println!(
            "  {:7} {:4} messages {:9.1} KB",
            kind.name(),
            count,
            *bytes as f64 / 1e3
        );
    }
    println!();

    // Warm-up, then the measured runs. Static runs do not depend on the link
    // speed; the selector's do.
    let mut static_runs: Vec<Vec<Run>> = vec![Vec::new(); STATIC.len()];
    let mut adaptive_runs: Vec<Vec<Run>> = vec![Vec::new(); SPEEDS.len()];
    for rep in 0..=repeats {
        let statics: Vec<Run> = STATIC
            .iter()
            .map(|&(_, choice)| run_static(&corpus, choice))
            .collect();
        let adaptives: Vec<Run> = SPEEDS
            .iter()
            .map(|&(link, _)| run_adaptive(&corpus, link, verbose && rep == repeats))
            .collect();
        if rep == 0 {
            continue;
        }
        for (i, run) in statics.into_iter().enumerate() {
            static_runs[i].push(run);
        }
        for (i, run) in adaptives.into_iter().enumerate() {
            adaptive_runs[i].push(run);
        }
    }

    let mut verdict_ok = true;
    let mut json_speeds = Vec::new();
    let mut ratio_lines = Vec::new();
    for (s, &(link, label)) in SPEEDS.iter().enumerate() {
        let mut rows: Vec<Summary> = STATIC
            .iter()
            .enumerate()
            .map(|(i, &(name, _))| summarize(name, &static_runs[i], link))
            .collect();
        rows.push(summarize(ADAPTIVE, &adaptive_runs[s], link));
        let best_static = rows[..STATIC.len()]
            .iter()
            .min_by(|a, b| a.delivery_ms.total_cmp(&b.delivery_ms))
            .expect("static strategies");
        let best_name = best_static.name.clone();
        let best_ms = best_static.delivery_ms;
        let adaptive = &rows[STATIC.len()];
        let ratio = adaptive.delivery_ms / best_ms;
        let ok = ratio <= TOLERANCE;
        verdict_ok &= ok;

        println!("## {label} ({link:.3e} bytes/s)\n");
        println!(
            "| strategy | bytes sent | ratio | compress ms | decompress ms | wire ms | delivery ms | vs best static |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {:.0} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
                row.name,
                row.bytes,
                total as f64 / row.bytes,
                row.compress_ms,
                row.decompress_ms,
                row.wire_ms,
                row.delivery_ms,
                row.delivery_ms / best_ms
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
        let all_runs: Vec<(&str, &Vec<Run>)> = STATIC
            .iter()
            .enumerate()
            .map(|(i, &(name, _))| (name, &static_runs[i]))
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
        let mut picks: BTreeMap<(Kind, String), Vec<f64>> = BTreeMap::new();
        for run in &adaptive_runs[s] {
            for (k, v) in &run.picks {
                picks.entry(k.clone()).or_default().push(*v as f64);
            }
        }
        let picks: Vec<String> = picks
            .into_iter()
            .map(|((kind, choice), mut v)| {
                format!("{} {}: {:.0}", kind.name(), choice, median(&mut v))
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
        ratio_lines.push(line);

        json_speeds.push(serde_json::json!({
            "label": label,
            "link_bytes_per_sec": link,
            "best_static": best_name,
            "selector_vs_best_static": ratio,
            "within_tolerance": ok,
            "strategies": rows.iter().map(|r| serde_json::json!({
                "name": r.name,
                "bytes_sent": r.bytes,
                "compress_ms": r.compress_ms,
                "decompress_ms": r.decompress_ms,
                "wire_ms": r.wire_ms,
                "delivery_ms": r.delivery_ms,
            })).collect::<Vec<_>>(),
        }));
    }

    if verdict_ok {
        println!(
            "VERDICT: PASS - the selector is within {:.0}% of the best static choice at both speeds",
            (TOLERANCE - 1.0) * 100.0
        );
    } else {
        println!(
            "VERDICT: MISS - the selector is NOT within {:.0}% of the best static choice at every speed",
            (TOLERANCE - 1.0) * 100.0
        );
    }

    let report = serde_json::json!({
        "quick": quick,
        "repeats": repeats,
        "corpus": {
            "messages": corpus.len(),
            "bytes": total,
            "kinds": by_kind.iter().map(|(k, (c, b))| serde_json::json!({
                "kind": k.name(), "messages": c, "bytes": b,
            })).collect::<Vec<_>>(),
        },
        "speeds": json_speeds,
        "tolerance": TOLERANCE,
        "within_tolerance": verdict_ok,
    });
    let dir = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let path = dir.join("selector.json");
    match std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).expect("serializes"),
        )
    }) {
        Ok(()) => println!("results written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
