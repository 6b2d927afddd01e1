//! CEL expressions (guards and action values), compiled once with the machine and
//! evaluated over two variables: `event` (the payload the transition was fired with)
//! and `context` (the instance's data).

use std::sync::Arc;

use serde_json::Value as Json;

thread_local! {
    /// CEL's standard functions and macros, built once per thread: building them is
    /// most of what an evaluation would otherwise cost. Each evaluation binds its
    /// variables in a scope of its own on top.
    static STDLIB: cel::Context<'static, 'static> = cel::Context::default();
}

/// A compiled CEL expression with its source text.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Compiles `source`; the error is the parser's message.
    ///
    /// ```
    /// use polycall_state::Expr;
    /// use serde_json::json;
    /// let e = Expr::compile("event.amount <= context.limit").unwrap();
    /// assert_eq!(e.eval(&json!({"amount": 5}), &json!({"limit": 10})).unwrap(), json!(true));
    /// assert!(Expr::compile("event.amount <=").is_err());
    /// ```
    pub fn compile(source: &str) -> Result<Self, ExprError> {
        let program = cel::Program::compile(source)
            .map_err(|e| ExprError::Compile(one_line(&e.to_string())))?;
        Ok(Self {
            source: Arc::from(source),
            program: Arc::new(program),
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates over `event` and `context`; the value as JSON.
    pub fn eval(&self, event: &Json, context: &Json) -> Result<Json, ExprError> {
        let v = STDLIB.with(|stdlib| {
            let mut ctx = stdlib.new_inner_scope();
            ctx.add_variable_from_value("event", from_json(event));
            ctx.add_variable_from_value("context", from_json(context));
            self.program.execute(&ctx)
        });
        to_json(&v.map_err(|e| ExprError::Eval(e.to_string()))?)
    }

    /// Evaluates a guard: the value must be a boolean.
    pub fn holds(&self, event: &Json, context: &Json) -> Result<bool, ExprError> {
        match self.eval(event, context)? {
            Json::Bool(b) => Ok(b),
            value => Err(ExprError::NotBoolean {
                guard: self.source.to_string(),
                value,
            }),
        }
    }
}

/// Why an expression did not compile or evaluate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExprError {
    /// The source is not valid CEL (the parser's message, on one line).
    #[error("{0}")]
    Compile(String),
    /// Evaluation failed (an unknown field, a type mismatch, …).
    #[error("{0}")]
    Eval(String),
    /// The value has no JSON form (a NaN, a CEL type JSON lacks).
    #[error("{0} has no JSON form")]
    NoJsonForm(String),
    /// A guard gave something other than a boolean.
    #[error("guard `{guard}` gave {value}, not a boolean")]
    NotBoolean {
        /// The guard's source.
        guard: String,
        /// What it gave.
        value: Json,
    },
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// JSON to CEL: integers become `int` (so `context.n + 1` works), `uint` only above
/// `i64::MAX`; other numbers `double`.
fn from_json(v: &Json) -> cel::Value {
    use cel::Value as V;
    match v {
        Json::Null => V::Null,
        Json::Bool(b) => V::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => V::Int(i),
            (None, Some(u)) => V::UInt(u),
            _ => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => V::String(Arc::new(s.clone())),
        Json::Array(a) => V::List(Arc::new(a.iter().map(from_json).collect())),
        Json::Object(m) => V::Map(cel::objects::Map {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), from_json(v)))
                    .collect(),
            ),
        }),
    }
}

fn to_json(v: &cel::Value) -> Result<Json, ExprError> {
    use cel::Value as V;
    Ok(match v {
        V::Null => Json::Null,
        V::Bool(b) => Json::Bool(*b),
        V::Int(i) => Json::from(*i),
        V::UInt(u) => Json::from(*u),
        V::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| ExprError::NoJsonForm(format!("{f}")))?,
        V::String(s) => Json::String(s.to_string()),
        V::List(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        V::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(v)?);
            }
            Json::Object(out)
        }
        other => {
            return Err(ExprError::NoJsonForm(format!(
                "a CEL value of type {other:?}"
            )));
        }
    })
}
