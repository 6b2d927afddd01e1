//! Pictures of machines and instances: Graphviz DOT and Mermaid for the machine's
//! graph (compound states as clusters), JSON for tools, and a self-contained HTML
//! timeline of one instance's history.

use std::fmt::Write as _;

use serde_json::{Value as Json, json};

use crate::definition::TransitionKind;
use crate::host::Change;
use crate::machine::{Machine, StateId};

/// The formats [`render`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Graphviz DOT.
    Dot,
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// JSON: states (with parents, flags) and transitions.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dot" => Ok(Self::Dot),
            "mermaid" => Ok(Self::Mermaid),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown graph format {other:?}: dot, mermaid or json"
            )),
        }
    }
}

/// The machine in `format`; `active` states (an instance's) are highlighted.
///
/// ```
/// use polycall_state::{MachineDef, Machine, graph};
/// let m = Machine::compile(MachineDef::builder("door", "closed").state("closed").state("open")
///     .transition("open", "closed", "open").build()).unwrap();
/// let dot = graph::render(&m, graph::Format::Dot, &[]);
/// assert!(dot.contains("\"closed\" -> \"open\" [label=\"open\"]"));
/// ```
pub fn render(machine: &Machine, format: Format, active: &[String]) -> String {
    match format {
        Format::Dot => dot(machine, active),
        Format::Mermaid => mermaid(machine),
        Format::Json => serde_json::to_string_pretty(&json_graph(machine)).unwrap_or_default(),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(m: &Machine, active: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(m.name()));
    let _ = writeln!(
        out,
        "  compound=true;\n  rankdir=LR;\n  node [shape=box, style=rounded];"
    );
    let _ = writeln!(out, "  \"__start\" [shape=point, label=\"\"];");
    fn node(m: &Machine, s: StateId, active: &[String], out: &mut String, indent: usize) {
        let st = &m.states[s];
        let pad = "  ".repeat(indent);
        if st.children.is_empty() {
            let mut attrs = Vec::new();
            if st.terminal {
                attrs.push("peripheries=2".to_string());
            }
            if active.contains(&st.name) {
                attrs.push("style=\"rounded,filled\", fillcolor=\"#ffe08a\"".to_string());
            }
            let _ = writeln!(out, "{pad}{} [{}];", quote(&st.name), attrs.join(", "));
        } else {
            let _ = writeln!(
                out,
                "{pad}subgraph {} {{",
                quote(&format!("cluster_{}", st.name))
            );
            let kind = if st.parallel { " (parallel)" } else { "" };
            let _ = writeln!(
                out,
                "{pad}  label={};",
                quote(&format!("{}{kind}", st.name))
            );
            if st.parallel {
                let _ = writeln!(out, "{pad}  style=dashed;");
            }
            if active.contains(&st.name) {
                let _ = writeln!(out, "{pad}  bgcolor=\"#fff6d5\";");
            }
            // An anchor node so edges can start and end at the cluster.
            let _ = writeln!(
                out,
                "{pad}  {} [shape=point, style=invis];",
                quote(&format!("{}__anchor", st.name))
            );
            for &c in &st.children {
                node(m, c, active, out, indent + 1);
            }
            let _ = writeln!(out, "{pad}}}");
        }
    }
    for s in 0..m.states.len() {
        if m.states[s].parent.is_none() {
            node(m, s, active, &mut out, 1);
        }
    }
    let endpoint = |s: StateId| {
        let st = &m.states[s];
        if st.children.is_empty() {
            (quote(&st.name), None)
        } else {
            (
                quote(&format!("{}__anchor", st.name)),
                Some(quote(&format!("cluster_{}", st.name))),
            )
        }
    };
    let (init, _) = endpoint(m.initial);
    let _ = writeln!(out, "  \"__start\" -> {init};");
    for t in &m.transitions {
        let (a, ac) = endpoint(t.from);
        let (b, bc) = endpoint(t.to);
        let mut label = t.name.clone();
        if let Some(g) = &t.guard {
            let _ = write!(label, " [{}]", g.source());
        }
        let mut attrs = vec![format!("label={}", quote(&label))];
        if let Some(c) = ac {
            attrs.push(format!("ltail={c}"));
        }
        if let Some(c) = bc {
            attrs.push(format!("lhead={c}"));
        }
        if t.kind == TransitionKind::Internal {
            attrs.push("style=dotted".into());
        }
        let _ = writeln!(out, "  {a} -> {b} [{}];", attrs.join(", "));
    }
    out.push_str("}\n");
    out
}

fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mermaid(m: &Machine) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    fn block(m: &Machine, s: StateId, out: &mut String, indent: usize) {
        let st = &m.states[s];
        let pad = "    ".repeat(indent);
        let id = mermaid_id(&st.name);
        if id != st.name {
            let _ = writeln!(out, "{pad}state \"{}\" as {id}", st.name);
        }
        if st.children.is_empty() {
            return;
        }
        let _ = writeln!(out, "{pad}state {id} {{");
        let kids = &st.children;
        for (i, &c) in kids.iter().enumerate() {
            if st.parallel && i > 0 {
                let _ = writeln!(out, "{pad}    --");
            }
            block(m, c, out, indent + 1);
            if st.parallel {
                // Each region enters its own initial.
                let _ = writeln!(out, "{pad}    [*] --> {}", mermaid_id(&m.states[c].name));
            }
        }
        if let Some(i) = st.initial {
            let _ = writeln!(out, "{pad}    [*] --> {}", mermaid_id(&m.states[i].name));
        }
        let _ = writeln!(out, "{pad}}}");
    }
    for s in 0..m.states.len() {
        if m.states[s].parent.is_none() {
            block(m, s, &mut out, 1);
        }
    }
    let _ = writeln!(out, "    [*] --> {}", mermaid_id(&m.states[m.initial].name));
    for t in &m.transitions {
        let mut label = t.name.clone();
        if let Some(g) = &t.guard {
            let _ = write!(label, " [{}]", g.source().replace(':', "#58;"));
        }
        let _ = writeln!(
            out,
            "    {} --> {} : {label}",
            mermaid_id(&m.states[t.from].name),
            mermaid_id(&m.states[t.to].name)
        );
    }
    for st in &m.states {
        if st.terminal {
            let _ = writeln!(out, "    {} --> [*]", mermaid_id(&st.name));
        }
    }
    out
}

/// The machine as JSON: `{"name", "version", "initial", "states": [...], "transitions": [...]}`.
pub fn json_graph(m: &Machine) -> Json {
    json!({
        "name": m.name(),
        "version": m.version(),
        "initial": m.states[m.initial].name,
        "states": m.states.iter().map(|s| json!({
            "name": s.name,
            "parent": s.parent.map(|p| m.states[p].name.clone()),
            "initial": s.initial.map(|i| m.states[i].name.clone()),
            "parallel": s.parallel,
            "final": s.terminal,
            "permissions": s.permissions,
        })).collect::<Vec<_>>(),
        "transitions": m.transitions.iter().map(|t| json!({
            "name": t.name,
            "from": m.states[t.from].name,
            "to": m.states[t.to].name,
            "guard": t.guard.as_ref().map(|g| g.source().to_string()),
            "kind": t.kind,
        })).collect::<Vec<_>>(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (no scripts, no external files) with one row per logged
/// event of an instance: time, index, what happened, and the integrity hash.
pub fn timeline_html(instance: &str, history: &[Change]) -> String {
    let mut rows = String::new();
    for c in history {
        let kind = c.event["kind"].as_str().unwrap_or("?");
        let what = match kind {
            "fired" => format!(
                "<b>{}</b> {}",
                esc(c.event["transition"].as_str().unwrap_or("")),
                esc(&c.event["event"].to_string())
            ),
            "created" => format!("created with {}", esc(&c.event["context"].to_string())),
            "locked" | "unlocked" => format!(
                "{kind} <b>{}</b>",
                esc(c.event["state"].as_str().unwrap_or(""))
            ),
            "restored" => format!("restored to {}", esc(&c.event["active"].to_string())),
            _ => esc(kind),
        };
        let _ = writeln!(
            rows,
            "<li class=\"{kind}\"><time>{}</time><span class=\"idx\">#{}</span><span class=\"what\">{what}</span><code>{}</code></li>",
            crate::time::format(c.ts_us),
            c.index,
            esc(&c.integrity.chars().take(16).collect::<String>())
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polycall state timeline: {id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
ol {{ list-style: none; border-left: 3px solid #888; padding-left: 1rem; }}
li {{ margin: .4rem 0; }}
li::before {{ content: "●"; color: #888; margin-left: -1.45rem; margin-right: .6rem; }}
li.fired::before {{ color: #2a7; }} li.restored::before {{ color: #c70; }} li.deleted::before {{ color: #c22; }}
time {{ color: #555; margin-right: .6rem; font-variant-numeric: tabular-nums; }}
.idx {{ color: #999; margin-right: .6rem; }} code {{ color: #999; margin-left: .6rem; }}
</style></head>
<body><h1>Instance {id}</h1><p>{n} events, oldest first.</p>
<ol id="timeline">
{rows}</ol></body></html>
"#,
        id = esc(instance),
        n = history.len(),
    )
}
