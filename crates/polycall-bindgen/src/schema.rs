//! The interface schema: services, methods and typed messages, read from TOML with
//! `FILE:LINE:COLUMN` diagnostics (format: `docs/bindgen.md`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The schema format version this crate reads.
pub const FORMAT: u32 = 1;

/// An interface: services and the messages their methods exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// What the interface is.
    pub doc: String,
    /// Where it came from: the schema file's name, or `sys.describe of HOST:PORT`.
    pub source: String,
    /// The services, in schema order.
    pub services: Vec<Service>,
    /// The messages, in schema order.
    pub messages: Vec<Message>,
}

/// A service: a named group of methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The service name (`inventory`, `shop.cart`).
    pub name: String,
    /// What it does.
    pub doc: String,
    /// Its methods, in schema order.
    pub methods: Vec<Method>,
}

/// One method of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// The method name (one segment).
    pub name: String,
    /// What it does.
    pub doc: String,
    /// Whether calling it twice has the effect of calling it once.
    pub idempotent: bool,
    /// The shape of its messages: unary, or which sides stream.
    pub kind: polycall_core::CallKind,
    /// The request message (of each request, when requests stream).
    pub input: MethodType,
    /// The reply message.
    pub output: MethodType,
}

/// What a method's request or reply is on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodType {
    /// Raw bytes (content type raw).
    Raw,
    /// A JSON object of the named message (content type JSON).
    Message(String),
}

/// A message: a JSON object with typed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message name.
    pub name: String,
    /// What it holds.
    pub doc: String,
    /// Its fields, in schema order.
    pub fields: Vec<Field>,
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The JSON key.
    pub name: String,
    /// What it holds.
    pub doc: String,
    /// Its type.
    pub ty: FieldType,
}

/// The type of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// A 64-bit signed integer.
    Int,
    /// A double.
    Float,
    /// `true` or `false`.
    Bool,
    /// Bytes, base64 in JSON.
    Bytes,
    /// Any JSON value.
    Any,
    /// An array.
    List(Box<FieldType>),
    /// The value, or null / absent.
    Optional(Box<FieldType>),
    /// A nested message.
    Message(String),
}

impl FieldType {
    /// Parses a schema type spelling (`int`, `list<optional<Item>>`); message names are
    /// not checked here.
    pub fn parse(text: &str) -> Result<FieldType, TypeError> {
        let t = text.trim();
        let inner = |prefix: &str| -> Option<&str> {
            t.strip_prefix(prefix)
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('<'))
                .and_then(|r| r.strip_suffix('>'))
        };
        if let Some(i) = inner("list") {
            return Ok(FieldType::List(Box::new(FieldType::parse(i)?)));
        }
        if let Some(i) = inner("optional") {
            return Ok(FieldType::Optional(Box::new(FieldType::parse(i)?)));
        }
        Ok(match t {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "bytes" => FieldType::Bytes,
            "any" => FieldType::Any,
            _ if is_message_name(t) => FieldType::Message(t.to_owned()),
            _ => {
                return Err(TypeError {
                    spelling: t.to_owned(),
                });
            }
        })
    }

    /// The schema spelling.
    pub fn text(&self) -> String {
        match self {
            FieldType::String => "string".into(),
            FieldType::Int => "int".into(),
            FieldType::Float => "float".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Bytes => "bytes".into(),
            FieldType::Any => "any".into(),
            FieldType::List(i) => format!("list<{}>", i.text()),
            FieldType::Optional(i) => format!("optional<{}>", i.text()),
            FieldType::Message(n) => n.clone(),
        }
    }

    /// Message names this type mentions; `required_only` skips those under `list<>` or
    /// `optional<>` (which may be empty, so they can recurse).
    fn messages(&self, required_only: bool, out: &mut Vec<String>) {
        match self {
            FieldType::Message(n) => out.push(n.clone()),
            FieldType::List(i) | FieldType::Optional(i) if !required_only => {
                i.messages(required_only, out)
            }
            _ => {}
        }
    }
}

/// A type spelling [`FieldType::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{spelling}` is not a type: use string, int, float, bool, bytes, any, list<T>, optional<T> or a message name"
)]
pub struct TypeError {
    /// The spelling (the innermost part that failed).
    pub spelling: String,
}

fn is_message_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn is_field_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// One problem in a schema file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a schema could not be read: every problem found, each with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct SchemaError(pub Vec<Diagnostic>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    format: Spanned<u32>,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    message: Vec<RawMessage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    method: Vec<RawMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    name: Spanned<String>,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    idempotent: bool,
    kind: Option<Spanned<String>>,
    input: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    name: Spanned<String>,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    field: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Spanned<String>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    #[serde(default)]
    doc: String,
}

struct Diags<'a> {
    file: &'a str,
    text: &'a str,
    list: Vec<Diagnostic>,
}

impl Diags<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let column = upto.rfind('\n').map_or(upto.len(), |i| upto.len() - i - 1) + 1;
        self.list.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// Reads a schema from its TOML `text`; `file` names it in diagnostics and becomes
/// [`Schema::source`].
pub fn parse(text: &str, file: &str) -> Result<Schema, SchemaError> {
    let mut d = Diags {
        file,
        text,
        list: Vec::new(),
    };
    let raw: RawSchema = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.message().trim().to_owned();
            d.at(e.span().unwrap_or(0..0), msg);
            return Err(SchemaError(d.list));
        }
    };
    if *raw.format.get_ref() != FORMAT {
        d.at(
            raw.format.span(),
            format!(
                "schema format {} is not supported: this bindgen reads format = {FORMAT}",
                raw.format.get_ref()
            ),
        );
    }
    // Messages first: names, fields, field types.
    let mut message_spans: HashMap<String, Range<usize>> = HashMap::new();
    let mut messages = Vec::new();
    for m in &raw.message {
        let name = m.name.get_ref();
        if !is_message_name(name) {
            d.at(
                m.name.span(),
                format!("message name `{name}` must start with a letter and hold only letters, digits and `_`"),
            );
        }
        if let Some(first) = message_spans.get(name) {
            let first = first.clone();
            let line = text[..first.start].matches('\n').count() + 1;
            d.at(
                m.name.span(),
                format!("duplicate message `{name}` (first defined on line {line}); rename one"),
            );
            continue;
        }
        message_spans.insert(name.clone(), m.name.span());
        let mut seen = BTreeSet::new();
        let mut fields = Vec::new();
        for f in &m.field {
            let fname = f.name.get_ref();
            if !is_field_name(fname) {
                d.at(
                    f.name.span(),
                    format!("field name `{fname}` must start with a letter or `_` and hold only letters, digits and `_`"),
                );
            }
            if !seen.insert(fname.clone()) {
                d.at(
                    f.name.span(),
                    format!("duplicate field `{fname}` in message `{name}`; rename one"),
                );
                continue;
            }
            match FieldType::parse(f.ty.get_ref()) {
                Ok(ty) => fields.push((
                    Field {
                        name: fname.clone(),
                        doc: f.doc.trim().to_owned(),
                        ty,
                    },
                    f.ty.span(),
                )),
                Err(why) => d.at(f.ty.span(), why.to_string()),
            }
        }
        messages.push((
            Message {
                name: name.clone(),
                doc: m.doc.trim().to_owned(),
                fields: fields.iter().map(|(f, _)| f.clone()).collect(),
            },
            fields,
        ));
    }
    // Every message a field names exists.
    for (_, fields) in &messages {
        for (f, span) in fields {
            let mut names = Vec::new();
            f.ty.messages(false, &mut names);
            for n in names {
                if !message_spans.contains_key(&n) {
                    d.at(
                        span.clone(),
                        format!("unknown type `{n}`: no [[message]] has that name (types: string, int, float, bool, bytes, any, list<T>, optional<T>, or a message)"),
                    );
                }
            }
        }
    }
    // No message contains itself through required fields only (it could never end).
    let required: BTreeMap<&str, Vec<String>> = messages
        .iter()
        .map(|(m, _)| {
            let mut v = Vec::new();
            for f in &m.fields {
                f.ty.messages(true, &mut v);
            }
            (m.name.as_str(), v)
        })
        .collect();
    for (m, _) in &messages {
        if reaches(&required, &m.name, &m.name, &mut BTreeSet::new()) {
            d.at(
                message_spans[&m.name].clone(),
                format!(
                    "message `{}` contains itself through required fields; make one of them optional<…> or list<…>",
                    m.name
                ),
            );
        }
    }
    // Services and methods.
    let mut services = Vec::new();
    let mut service_names: HashMap<String, usize> = HashMap::new();
    for s in &raw.service {
        let name = s.name.get_ref();
        if let Err(e) = polycall_core::ServiceName::new(name.as_str()) {
            d.at(s.name.span(), format!("service name `{name}`: {e}"));
        }
        if let Some(line) = service_names.get(name) {
            d.at(
                s.name.span(),
                format!("duplicate service `{name}` (first defined on line {line}); merge them"),
            );
            continue;
        }
        service_names.insert(
            name.clone(),
            text[..s.name.span().start].matches('\n').count() + 1,
        );
        let mut seen = BTreeSet::new();
        let mut methods = Vec::new();
        for m in &s.method {
            let mname = m.name.get_ref();
            if let Err(e) = polycall_core::MethodName::new(mname.as_str()) {
                d.at(m.name.span(), format!("method name `{mname}`: {e}"));
            }
            if !seen.insert(mname.clone()) {
                d.at(
                    m.name.span(),
                    format!("duplicate method `{name}.{mname}`; rename one"),
                );
                continue;
            }
            let mut side = |v: &Option<Spanned<String>>| -> MethodType {
                let Some(v) = v else {
                    return MethodType::Raw;
                };
                let t = v.get_ref().trim();
                if t == "bytes" {
                    MethodType::Raw
                } else if message_spans.contains_key(t) {
                    MethodType::Message(t.to_owned())
                } else {
                    d.at(
                        v.span(),
                        format!("unknown type `{t}`: a method's input and output are \"bytes\" (raw) or the name of a [[message]]"),
                    );
                    MethodType::Raw
                }
            };
            let input = side(&m.input);
            let output = side(&m.output);
            let kind = match &m.kind {
                None => polycall_core::CallKind::Unary,
                Some(k) => match k.get_ref().as_str() {
                    "unary" => polycall_core::CallKind::Unary,
                    "server_stream" => polycall_core::CallKind::ServerStream,
                    "client_stream" => polycall_core::CallKind::ClientStream,
                    "bidi" => polycall_core::CallKind::Bidi,
                    other => {
                        d.at(
                            k.span(),
                            format!("unknown kind `{other}`: a method is \"unary\" (the default), \"server_stream\", \"client_stream\" or \"bidi\""),
                        );
                        polycall_core::CallKind::Unary
                    }
                },
            };
            methods.push(Method {
                name: mname.clone(),
                doc: m.doc.trim().to_owned(),
                idempotent: m.idempotent,
                kind,
                input,
                output,
            });
        }
        services.push(Service {
            name: name.clone(),
            doc: s.doc.trim().to_owned(),
            methods,
        });
    }
    if !d.list.is_empty() {
        return Err(SchemaError(d.list));
    }
    Ok(Schema {
        doc: raw.doc.trim().to_owned(),
        source: std::path::Path::new(file)
            .file_name()
            .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned()),
        services,
        messages: messages.into_iter().map(|(m, _)| m).collect(),
    })
}

fn reaches<'a>(
    graph: &'a BTreeMap<&str, Vec<String>>,
    from: &'a str,
    target: &str,
    seen: &mut BTreeSet<&'a str>,
) -> bool {
    let Some(next) = graph.get(from) else {
        return false;
    };
    for n in next {
        if n == target {
            return true;
        }
        if seen.insert(n.as_str()) && reaches(graph, n.as_str(), target, seen) {
            return true;
        }
    }
    false
}

impl Schema {
    /// The message called `name`.
    pub fn message(&self, name: &str) -> Option<&Message> {
        self.messages.iter().find(|m| m.name == name)
    }

    /// `names` and every message they contain, transitively, in dependency order (a
    /// message after those it contains; cycles through optional fields are cut).
    pub fn closure(&self, names: &[String]) -> Vec<&Message> {
        let mut out: Vec<&Message> = Vec::new();
        let mut visiting = BTreeSet::new();
        for n in names {
            self.visit(n, &mut visiting, &mut out);
        }
        out
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        visiting: &mut BTreeSet<String>,
        out: &mut Vec<&'a Message>,
    ) {
        if out.iter().any(|m| m.name == name) || !visiting.insert(name.to_owned()) {
            return;
        }
        if let Some(m) = self.message(name) {
            for f in &m.fields {
                let mut deps = Vec::new();
                f.ty.messages(false, &mut deps);
                for dep in deps {
                    self.visit(&dep, visiting, out);
                }
            }
            out.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_print_back() {
        for t in [
            "string",
            "int",
            "list<optional<Item>>",
            "optional<bytes>",
            "any",
        ] {
            assert_eq!(FieldType::parse(t).unwrap().text(), t);
        }
        assert!(FieldType::parse("list<>").is_err());
        assert!(FieldType::parse("map<string>").is_err());
    }

    #[test]
    fn the_conformance_schema_reads() {
        let text = include_str!("../../../bindings/conformance/conformance.toml");
        let s = parse(text, "conformance.toml").unwrap();
        assert_eq!(s.services.len(), 1);
        let names: Vec<_> = s.services[0]
            .methods
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "echo", "add", "fail", "sleep", "exit_now", "count", "total", "relay"
            ]
        );
        let kinds: Vec<_> = s.services[0].methods.iter().map(|m| m.kind).collect();
        use polycall_core::CallKind::*;
        assert_eq!(
            kinds,
            [
                Unary,
                Unary,
                Unary,
                Unary,
                Unary,
                ServerStream,
                ClientStream,
                Bidi
            ]
        );
        assert_eq!(s.services[0].methods[0].input, MethodType::Raw);
        assert_eq!(
            s.services[0].methods[1].input,
            MethodType::Message("AddInput".into())
        );
    }

    #[test]
    fn an_unknown_kind_names_the_kinds_there_are() {
        let text = "format = 1\n[[service]]\nname = \"s\"\n[[service.method]]\nname = \"m\"\nkind = \"streaming\"\n";
        let err = parse(text, "k.toml").unwrap_err().to_string();
        assert!(
            err.contains("k.toml:6:8") && err.contains("server_stream") && err.contains("bidi"),
            "{err}"
        );
    }

    #[test]
    fn problems_name_their_line_and_column() {
        let text = "format = 1\n\n[[service]]\nname = \"s\"\n[[service.method]]\nname = \"m\"\ninput = \"Nope\"\n[[service.method]]\nname = \"m\"\n\n[[message]]\nname = \"A\"\n[[message.field]]\nname = \"x\"\ntype = \"lst<int>\"\n[[message.field]]\nname = \"x\"\ntype = \"int\"\n";
        let err = parse(text, "bad.toml").unwrap_err();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bad.toml:15:8:") && l.contains("lst<int>")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bad.toml:17:8:") && l.contains("duplicate field")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bad.toml:7:9:") && l.contains("unknown type `Nope`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bad.toml:9:8:") && l.contains("duplicate method")),
            "{lines:?}"
        );
    }

    #[test]
    fn unknown_keys_and_self_containment_are_refused() {
        let err = parse("format = 1\nsevice = 3\n", "x.toml").unwrap_err();
        assert!(err.0[0].to_string().starts_with("x.toml:2:1:"), "{err}");
        let err = parse(
            "format = 1\n[[message]]\nname = \"N\"\n[[message.field]]\nname = \"next\"\ntype = \"N\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("contains itself"), "{err}");
        // Through optional it is fine.
        parse(
            "format = 1\n[[message]]\nname = \"N\"\n[[message.field]]\nname = \"next\"\ntype = \"optional<N>\"\n",
            "x.toml",
        )
        .unwrap();
        let err = parse("format = 2\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("format 2"), "{err}");
    }
}
