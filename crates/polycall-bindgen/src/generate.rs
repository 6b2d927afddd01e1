//! Template sets and rendering: a schema and a target's templates → files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::ident;
use crate::schema::{FieldType, MethodType, Schema};

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// What `polycall-bindgen` calls itself in generated headers.
pub const GENERATOR: &str = concat!("polycall-bindgen ", env!("CARGO_PKG_VERSION"));

/// Why bindings could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// No template set of that name is built in.
    #[error("no target `{target}`: this bindgen knows {known}")]
    UnknownTarget {
        /// The target asked for.
        target: String,
        /// The targets there are.
        known: String,
    },
    /// A template set's `manifest.toml` is wrong (a bug in the template set).
    #[error("template set `{target}`: manifest.toml: {message}")]
    Manifest {
        /// The template set.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// A template failed to compile or render (a bug in the template set).
    #[error("template {template}: {message}")]
    Template {
        /// The template (`target/file`).
        template: String,
        /// minijinja's account, with the template line.
        message: String,
    },
}

/// A target's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    /// The `--lang` value.
    pub name: String,
    /// What it generates.
    pub description: String,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Where it goes, relative to the output directory.
    pub path: PathBuf,
    /// Its text.
    pub contents: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    types: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    output: Vec<Output>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    template: String,
    path: String,
    #[serde(default)]
    per: Per,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Per {
    #[default]
    Service,
    Schema,
}

fn manifest(target: &str) -> Result<Manifest, GenerateError> {
    let bad = |message: String| GenerateError::Manifest {
        target: target.to_owned(),
        message,
    };
    let files = TEMPLATE_SETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, files)| *files)
        .ok_or_else(|| GenerateError::UnknownTarget {
            target: target.to_owned(),
            known: targets()
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let text = files
        .iter()
        .find(|(f, _)| *f == "manifest.toml")
        .map(|(_, t)| *t)
        .ok_or_else(|| bad("missing".into()))?;
    let m: Manifest = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if m.name != target {
        return Err(bad(format!(
            "name `{}` differs from the directory `{target}`",
            m.name
        )));
    }
    Ok(m)
}

/// The built-in targets (template sets with a manifest).
pub fn targets() -> Vec<TargetInfo> {
    TEMPLATE_SETS
        .iter()
        .filter_map(|(name, files)| {
            let text = files.iter().find(|(f, _)| *f == "manifest.toml")?.1;
            let m: Manifest = toml::from_str(text).ok()?;
            Some(TargetInfo {
                name: (*name).to_owned(),
                description: m.description,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
struct Ident {
    snake: String,
    camel: String,
    pascal: String,
    upper: String,
}

#[derive(Debug, Clone, Serialize)]
struct TypeCtx {
    kind: &'static str,
    name: Option<String>,
    item: Option<Box<TypeCtx>>,
    text: String,
    hint: String,
    json: bool,
    lang: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct FieldCtx {
    name: String,
    doc: String,
    ident: Ident,
    #[serde(rename = "type")]
    ty: TypeCtx,
    optional: bool,
}

#[derive(Debug, Clone, Serialize)]
struct MessageCtx {
    name: String,
    doc: String,
    ident: Ident,
    fields: Vec<FieldCtx>,
}

#[derive(Debug, Clone, Serialize)]
struct MethodCtx {
    name: String,
    full_name: String,
    doc: String,
    idempotent: bool,
    /// `unary`, `server_stream`, `client_stream` or `bidi`.
    kind: &'static str,
    /// The caller sends a stream of requests.
    requests_stream: bool,
    /// The callee answers with a stream of replies.
    replies_stream: bool,
    ident: Ident,
    input: TypeCtx,
    output: TypeCtx,
}

#[derive(Debug, Clone, Serialize)]
struct ServiceCtx {
    name: String,
    doc: String,
    ident: Ident,
    methods: Vec<MethodCtx>,
    messages: Vec<MessageCtx>,
}

#[derive(Debug, Clone, Serialize)]
struct SchemaCtx {
    format: u32,
    doc: String,
    source: String,
    services: Vec<ServiceCtx>,
    messages: Vec<MessageCtx>,
}

struct Builder<'a> {
    schema: &'a Schema,
    manifest: &'a Manifest,
}

/// The hint sent in REGISTER for a message: `{"a": int, "b": list<string>}`.
pub fn message_hint(schema: &Schema, name: &str) -> String {
    match schema.message(name) {
        Some(m) => {
            let fields: Vec<String> = m
                .fields
                .iter()
                .map(|f| format!("\"{}\": {}", f.name, f.ty.text()))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        None => name.to_owned(),
    }
}

impl Builder<'_> {
    fn ident(&self, s: &str) -> Ident {
        let esc = |v: String| {
            if self.manifest.keywords.contains(&v) {
                v + "_"
            } else {
                v
            }
        };
        Ident {
            snake: esc(ident::snake(s)),
            camel: esc(ident::camel(s)),
            pascal: esc(ident::pascal(s)),
            upper: esc(ident::upper(s)),
        }
    }

    fn lang(
        &self,
        kind: &str,
        item: Option<&TypeCtx>,
        name: Option<&str>,
    ) -> Result<BTreeMap<String, String>, GenerateError> {
        let mut out = BTreeMap::new();
        for (table, patterns) in &self.manifest.types {
            let pattern = patterns.get(kind).ok_or_else(|| GenerateError::Manifest {
                target: self.manifest.name.clone(),
                message: format!("[types.{table}] has no `{kind}`"),
            })?;
            let mut s = pattern.clone();
            if let Some(i) = item {
                s = s.replace("{item}", i.lang.get(table).map_or("", String::as_str));
            }
            if let Some(n) = name {
                s = s.replace("{name}", &self.ident(n).pascal);
            }
            out.insert(table.clone(), s);
        }
        Ok(out)
    }

    fn field_type(&self, t: &FieldType) -> Result<TypeCtx, GenerateError> {
        let (kind, item, name) = match t {
            FieldType::String => ("string", None, None),
            FieldType::Int => ("int", None, None),
            FieldType::Float => ("float", None, None),
            FieldType::Bool => ("bool", None, None),
            FieldType::Bytes => ("bytes", None, None),
            FieldType::Any => ("any", None, None),
            FieldType::List(i) => ("list", Some(Box::new(self.field_type(i)?)), None),
            FieldType::Optional(i) => ("optional", Some(Box::new(self.field_type(i)?)), None),
            FieldType::Message(n) => ("message", None, Some(n.clone())),
        };
        let lang = self.lang(kind, item.as_deref(), name.as_deref())?;
        Ok(TypeCtx {
            kind,
            text: t.text(),
            hint: t.text(),
            json: false,
            name,
            item,
            lang,
        })
    }

    fn method_type(&self, t: &MethodType) -> Result<TypeCtx, GenerateError> {
        Ok(match t {
            MethodType::Raw => TypeCtx {
                kind: "raw",
                name: None,
                item: None,
                text: "bytes".into(),
                hint: "bytes".into(),
                json: false,
                lang: self.lang("raw", None, None)?,
            },
            MethodType::Message(n) => TypeCtx {
                kind: "message",
                name: Some(n.clone()),
                item: None,
                text: n.clone(),
                hint: message_hint(self.schema, n),
                json: true,
                lang: self.lang("message", None, Some(n))?,
            },
        })
    }

    fn message(&self, m: &crate::schema::Message) -> Result<MessageCtx, GenerateError> {
        let mut fields = Vec::new();
        for f in &m.fields {
            fields.push(FieldCtx {
                name: f.name.clone(),
                doc: f.doc.clone(),
                ident: self.ident(&f.name),
                ty: self.field_type(&f.ty)?,
                optional: matches!(f.ty, FieldType::Optional(_)),
            });
        }
        Ok(MessageCtx {
            name: m.name.clone(),
            doc: m.doc.clone(),
            ident: self.ident(&m.name),
            fields,
        })
    }

    fn schema(&self) -> Result<SchemaCtx, GenerateError> {
        let mut services = Vec::new();
        for s in &self.schema.services {
            let mut methods = Vec::new();
            let mut used = Vec::new();
            for m in &s.methods {
                for side in [&m.input, &m.output] {
                    if let MethodType::Message(n) = side {
                        used.push(n.clone());
                    }
                }
                methods.push(MethodCtx {
                    name: m.name.clone(),
                    full_name: format!("{}.{}", s.name, m.name),
                    doc: m.doc.clone(),
                    idempotent: m.idempotent,
                    kind: m.kind.as_str(),
                    requests_stream: m.kind.streams_requests(),
                    replies_stream: m.kind.streams_replies(),
                    ident: self.ident(&m.name),
                    input: self.method_type(&m.input)?,
                    output: self.method_type(&m.output)?,
                });
            }
            let messages = self
                .schema
                .closure(&used)
                .into_iter()
                .map(|m| self.message(m))
                .collect::<Result<_, _>>()?;
            services.push(ServiceCtx {
                name: s.name.clone(),
                doc: s.doc.clone(),
                ident: self.ident(&s.name),
                methods,
                messages,
            });
        }
        let all: Vec<String> = self
            .schema
            .messages
            .iter()
            .map(|m| m.name.clone())
            .collect();
        let messages = self
            .schema
            .closure(&all)
            .into_iter()
            .map(|m| self.message(m))
            .collect::<Result<_, _>>()?;
        Ok(SchemaCtx {
            format: crate::schema::FORMAT,
            doc: self.schema.doc.clone(),
            source: self.schema.source.clone(),
            services,
            messages,
        })
    }
}

fn template_error(template: &str, e: &minijinja::Error) -> GenerateError {
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message.push_str(&format!(": {s}"));
        src = s.source();
    }
    GenerateError::Template {
        template: template.to_owned(),
        message,
    }
}

fn environment() -> Result<Environment<'static>, GenerateError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| template_error("(syntax)", &e))?;
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("snake", |s: String| ident::snake(&s));
    env.add_filter("camel", |s: String| ident::camel(&s));
    env.add_filter("pascal", |s: String| ident::pascal(&s));
    env.add_filter("upper", |s: String| ident::upper(&s));
    env.add_filter("str_literal", |s: String| {
        serde_json::to_string(&s).unwrap_or_else(|_| "\"\"".into())
    });
    env.add_filter("comment_lines", |s: String, prefix: String| {
        if s.is_empty() {
            return String::new();
        }
        s.lines()
            .map(|l| format!("{prefix}{l}").trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    });
    for (set, files) in TEMPLATE_SETS {
        for (file, text) in *files {
            if file.ends_with(".j2") {
                let name = format!("{set}/{file}");
                env.add_template_owned(name.clone(), *text)
                    .map_err(|e| template_error(&name, &e))?;
            }
        }
    }
    Ok(env)
}

/// Renders `schema` with the template set of `target` (`python`, `typescript`,
/// `markdown`, …).
pub fn generate(schema: &Schema, target: &str) -> Result<Vec<GeneratedFile>, GenerateError> {
    let manifest = manifest(target)?;
    let ctx = Builder {
        schema,
        manifest: &manifest,
    }
    .schema()?;
    let env = environment()?;
    let target_info = TargetInfo {
        name: manifest.name.clone(),
        description: manifest.description.clone(),
    };
    let mut out = Vec::new();
    for o in &manifest.output {
        let name = format!("{target}/{}", o.template);
        let tmpl = env
            .get_template(&name)
            .map_err(|e| template_error(&name, &e))?;
        let scopes: Vec<Option<&ServiceCtx>> = match o.per {
            Per::Schema => vec![None],
            Per::Service => ctx.services.iter().map(Some).collect(),
        };
        for service in scopes {
            let mut vars = BTreeMap::new();
            vars.insert("schema", Value::from(Serde(&ctx)));
            vars.insert("target", Value::from(Serde(&target_info)));
            vars.insert("generator", Value::from(GENERATOR));
            if let Some(s) = service {
                vars.insert("service", Value::from(Serde(s)));
            }
            let vars = Value::from(Serde(&vars));
            let path = env
                .render_str(&o.path, vars.clone())
                .map_err(|e| template_error(&format!("{name} (path)"), &e))?;
            let contents = tmpl.render(vars).map_err(|e| template_error(&name, &e))?;
            out.push(GeneratedFile {
                path: PathBuf::from(path.trim()),
                contents,
            });
        }
    }
    Ok(out)
}
