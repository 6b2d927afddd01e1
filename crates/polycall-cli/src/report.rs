//! `polycall report --since 1h -o report.html`: a self-contained performance report
//! (no scripts, no external files) from the runtime's retained one-second samples:
//! per-method throughput and latency plots, top errors, anomalies and ejections, and
//! resource use.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polycall::{Payload, Status};
use serde_json::{Value, json};

use crate::Target;
use crate::output::Out;

/// Arguments of `polycall report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    target: Target,
    /// How far back: a number and a unit, `90s`, `15m`, `1h` (the runtime keeps an hour).
    #[arg(long, default_value = "1h")]
    since: String,
    /// The HTML file to write.
    #[arg(long, short = 'o', default_value = "polycall-report.html")]
    output: PathBuf,
}

/// `90s`, `15m`, `1h` → a duration.
pub(crate) fn parse_since(s: &str) -> Result<Duration, Status> {
    let bad = || {
        Status::invalid_input(format!(
            "--since {s:?}: give a number and a unit, like 90s, 15m or 1h"
        ))
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs `polycall report`.
pub async fn report(args: ReportArgs, timeout: Duration, out: Out) -> u8 {
    let since = match parse_since(&args.since) {
        Ok(d) => d,
        Err(e) => return out.fail("report", &e),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let since_ms = now_ms.saturating_sub(since.as_millis() as u64);
    let request = json!({"since_ms": since_ms, "points": 720});
    let result = async {
        let channel = crate::client::connect(&args.target, timeout).await?;
        let payload = Payload::json(&request).map_err(|e| Status::internal(e.to_string()))?;
        let history = crate::client::invoke(
            &channel,
            "sys.metrics.history",
            payload,
            timeout,
            crate::client::PLAIN,
        )
        .await?;
        let health = crate::client::invoke(
            &channel,
            "sys.health",
            Payload::empty(),
            timeout,
            crate::client::PLAIN,
        )
        .await?;
        let history = history.to_json().map_err(|e| {
            Status::malformed(format!("sys.metrics.history answered non-JSON: {e}"))
        })?;
        let health = health.to_json().unwrap_or(Value::Null);
        Ok::<_, Status>((history, health))
    }
    .await;
    let (history, health) = match result {
        Ok(v) => v,
        Err(e) => return out.fail("report", &e),
    };
    let html = render(&history, &health, &args.since, now_ms);
    if let Err(e) = std::fs::write(&args.output, html) {
        return out.fail(
            "report",
            &Status::invalid_input(format!("cannot write {}: {e}", args.output.display())),
        );
    }
    let samples = history["samples"].as_array().map_or(0, Vec::len);
    let path = args.output.display().to_string();
    out.ok("report", json!({"file": path, "samples": samples}), || {
        format!("wrote {path} ({samples} samples)")
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A line plot of named series over time (SVG, inline).
fn plot(title: &str, unit: &str, series: &[(String, Vec<(u64, f64)>)]) -> String {
    let (w, h) = (760.0, 220.0);
    let (left, bottom) = (56.0, 24.0);
    let all = series.iter().flat_map(|(_, s)| s.iter());
    let (mut t0, mut t1, mut max) = (u64::MAX, 0u64, 0f64);
    for (t, v) in all {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
        max = max.max(*v);
    }
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">",
        esc(title)
    );
    if t0 > t1 {
        svg.push_str("<text x=\"10\" y=\"30\">no data</text></svg></figure>");
        return svg;
    }
    let max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| left + (t - t0) as f64 / span * (w - left - 10.0);
    let y = |v: f64| h - bottom - v / max * (h - bottom - 10.0);
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{b}\" x2=\"{w}\" y2=\"{b}\" stroke=\"#999\"/><line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"16\">{top:.3} {unit}</text><text x=\"4\" y=\"{b}\">0</text>\
         <text x=\"{left}\" y=\"{h}\">{}</text><text x=\"{r}\" y=\"{h}\" text-anchor=\"end\">{}</text>",
        clock(t0),
        clock(t1),
        b = h - bottom,
        top = max,
        r = w - 10.0,
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
            pts.join(" "),
            esc(name)
        );
    }
    svg.push_str("</svg><p class=\"legend\">");
    for (i, (name, _)) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<span><i style=\"background:{}\"></i>{}</span> ",
            COLORS[i % COLORS.len()],
            esc(name)
        );
    }
    svg.push_str("</p></figure>");
    svg
}

/// `HH:MM:SS` UTC of a Unix-ms time.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// One method's totals and series over the period (server side).
#[derive(Default)]
struct MethodSeries {
    calls: u64,
    errors: u64,
    /// (Unix ms, calls/s).
    rate: Vec<(u64, f64)>,
    /// (Unix ms, ms).
    p50: Vec<(u64, f64)>,
    /// (Unix ms, ms).
    p99: Vec<(u64, f64)>,
}

/// The report page.
pub(crate) fn render(history: &Value, health: &Value, since: &str, now_ms: u64) -> String {
    let samples = history["samples"].as_array().cloned().unwrap_or_default();
    // Per method (server side): totals, and series of rate and latency.
    let mut methods: std::collections::BTreeMap<String, MethodSeries> = Default::default();
    let mut prev_t: Option<u64> = None;
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for s in &samples {
        let t = s["unix_ms"].as_u64().unwrap_or(0);
        // Merged samples stand for several seconds: rates divide by the span.
        let secs = prev_t.map_or(1.0, |p| ((t.saturating_sub(p)) as f64 / 1000.0).max(1.0));
        prev_t = Some(t);
        rss.push((
            t,
            s["resources"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        ));
        cpu.push((t, s["cpu_cores"].as_f64().unwrap_or(0.0) * 100.0));
        for m in s["methods"].as_array().into_iter().flatten() {
            if m["side"] != "server" {
                continue;
            }
            let name = m["method"].as_str().unwrap_or("?").to_owned();
            let e = methods.entry(name).or_default();
            let calls = m["calls"].as_u64().unwrap_or(0);
            e.calls += calls;
            e.errors += m["errors"].as_u64().unwrap_or(0);
            e.rate.push((t, calls as f64 / secs));
            e.p50.push((t, m["p50_ms"].as_f64().unwrap_or(0.0)));
            e.p99.push((t, m["p99_ms"].as_f64().unwrap_or(0.0)));
        }
    }
    let mut busiest: Vec<_> = methods.iter().collect();
    busiest.sort_by_key(|(_, v)| std::cmp::Reverse(v.calls));
    let top: Vec<_> = busiest.iter().take(8).collect();
    let rate: Vec<_> = top
        .iter()
        .map(|(n, v)| ((*n).clone(), v.rate.clone()))
        .collect();
    let p99: Vec<_> = top
        .iter()
        .map(|(n, v)| (format!("{n} p99"), v.p99.clone()))
        .collect();
    let p50: Vec<_> = top
        .iter()
        .map(|(n, v)| (format!("{n} p50"), v.p50.clone()))
        .collect();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>polycall report</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:900px;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}th,td{{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}svg text{{font-size:11px;fill:#444}}figure{{margin:1em 0}}\
         figcaption{{font-weight:600}}.legend span{{margin-right:1em;font-size:12px}}.legend i{{display:inline-block;width:10px;height:10px;margin-right:4px}}\
         </style></head><body><h1>polycall report</h1><p>Runtime {} ({}) — the last {} up to {}, {} samples.</p>",
        esc(health["endpoint"].as_str().unwrap_or("?")),
        esc(health["status"].as_str().unwrap_or("?")),
        esc(since),
        clock(now_ms),
        samples.len()
    );
    html.push_str("<h2>Methods</h2><table><tr><th>method</th><th class=\"n\">calls</th><th class=\"n\">errors</th><th class=\"n\">worst p99 ms</th></tr>");
    for (name, v) in &busiest {
        let worst = v.p99.iter().map(|p| p.1).fold(0.0, f64::max);
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{worst:.2}</td></tr>",
            esc(name),
            v.calls,
            v.errors
        );
    }
    if busiest.is_empty() {
        html.push_str("<tr><td colspan=\"4\">no calls in this period</td></tr>");
    }
    html.push_str("</table>");
    html.push_str(&plot("Throughput (calls/s)", "calls/s", &rate));
    html.push_str(&plot("Latency p99 (ms)", "ms", &p99));
    html.push_str(&plot("Latency p50 (ms)", "ms", &p50));
    html.push_str("<h2>Top errors (since the runtime started)</h2><table><tr><th>method</th><th>code</th><th class=\"n\">count</th></tr>");
    let mut errors = history["errors"].as_array().cloned().unwrap_or_default();
    errors.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
    for e in errors.iter().take(20) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(e["method"].as_str().unwrap_or("?")),
            esc(e["code"].as_str().unwrap_or("?")),
            e["count"]
        );
    }
    if errors.is_empty() {
        html.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    html.push_str("</table><h2>Anomalies and ejections</h2><ul>");
    let anomalies = history["anomalies"].as_array().cloned().unwrap_or_default();
    let ejections = history["ejections"].as_array().cloned().unwrap_or_default();
    for a in &anomalies {
        let _ = write!(
            html,
            "<li>anomaly in force since {}: {} {} (observed {:.4}, baseline {:.4})</li>",
            clock(a["since_unix_ms"].as_u64().unwrap_or(0)),
            esc(a["method"].as_str().unwrap_or("?")),
            esc(a["kind"].as_str().unwrap_or("?")),
            a["observed"].as_f64().unwrap_or(0.0),
            a["baseline"].as_f64().unwrap_or(0.0)
        );
    }
    for e in &ejections {
        let (t, e) = (&e[0], &e[1]);
        let _ = write!(
            html,
            "<li>{}: provider-{} ejected from {} for {} s: {}</li>",
            clock(t.as_u64().unwrap_or(0)),
            e["endpoint"],
            esc(e["method"].as_str().unwrap_or("?")),
            e["for_ms"].as_u64().unwrap_or(0) / 1000,
            esc(e["evidence"].as_str().unwrap_or(""))
        );
    }
    if anomalies.is_empty() && ejections.is_empty() {
        html.push_str("<li>none</li>");
    }
    html.push_str("</ul><h2>Resources</h2>");
    html.push_str(&plot(
        "Resident memory (MiB)",
        "MiB",
        &[("RSS".into(), rss)],
    ));
    html.push_str(&plot("CPU (% of one core)", "%", &[("CPU".into(), cpu)]));
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_since("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_since("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "h", "10", "5d", "0s", "-1h", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_report_escapes_names_and_plots_what_it_has() {
        let history = json!({
            "samples": [
                {"unix_ms": 1000, "cpu_cores": 0.5, "resources": {"rss_bytes": 10485760}, "methods": [
                    {"method": "a.<b>", "side": "server", "calls": 10, "errors": 1, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "mean_ms": 1.2}]},
                {"unix_ms": 2000, "cpu_cores": 0.4, "resources": {"rss_bytes": 10485760}, "methods": [
                    {"method": "a.<b>", "side": "server", "calls": 20, "errors": 0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 9.0, "mean_ms": 1.2}]}
            ],
            "errors": [{"method": "a.<b>", "code": "busy", "count": 1}],
            "anomalies": [], "ejections": []
        });
        let html = render(
            &history,
            &json!({"endpoint": "127.0.0.1:1", "status": "ok"}),
            "1h",
            3000,
        );
        assert!(html.contains("a.&lt;b&gt;") && !html.contains("a.<b>"));
        assert!(html.contains("<td class=\"n\">30</td>"), "total calls");
        assert!(html.contains("9.00"), "worst p99");
        assert!(html.matches("<polyline").count() >= 5);
        assert!(!html.contains("<script"));
    }
}
