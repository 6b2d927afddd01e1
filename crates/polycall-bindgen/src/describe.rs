//! A schema from a live runtime's `sys.describe` answer.
//!
//! `sys.describe` lists every method with its summary, idempotency and free-text input
//! and output hints. Hints written the way bindgen writes them (`{"a": int, "b":
//! list<string>}`) become messages; any other hint makes that side raw bytes.

use serde_json::Value;

use crate::schema::{Field, FieldType, Message, Method, MethodType, Schema, Service};

/// Why a `sys.describe` answer could not be turned into a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// The answer has no `methods` array.
    #[error("sys.describe answered without a `methods` array: is this a polycall runtime? ({0})")]
    Shape(String),
}

/// The message a hint describes, if it is in bindgen's hint grammar: `{}` or
/// `{"key": type, …}` with field types other than message names.
pub fn parse_hint(hint: &str) -> Option<Vec<Field>> {
    let body = hint.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    if body.is_empty() {
        return Some(Vec::new());
    }
    let mut fields = Vec::new();
    for entry in body.split(',') {
        let (key, ty) = entry.split_once(':')?;
        let key = key.trim().strip_prefix('"')?.strip_suffix('"')?;
        let ty = FieldType::parse(ty).ok()?;
        let mut plain = true;
        check_plain(&ty, &mut plain);
        if !plain || key.is_empty() || fields.iter().any(|f: &Field| f.name == key) {
            return None;
        }
        fields.push(Field {
            name: key.to_owned(),
            doc: String::new(),
            ty,
        });
    }
    Some(fields)
}

fn check_plain(t: &FieldType, plain: &mut bool) {
    match t {
        FieldType::Message(_) => *plain = false,
        FieldType::List(i) | FieldType::Optional(i) => check_plain(i, plain),
        _ => {}
    }
}

fn pascal(s: &str) -> String {
    crate::ident::pascal(s)
}

/// The schema of a runtime's `sys.describe` answer; `endpoint` names it in
/// [`Schema::source`].
pub fn from_describe(describe: &Value, endpoint: &str) -> Result<Schema, DescribeError> {
    let methods = describe["methods"]
        .as_array()
        .ok_or_else(|| DescribeError::Shape(describe.to_string().chars().take(200).collect()))?;
    let mut services: Vec<Service> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for m in methods {
        let Some(full) = m["name"].as_str() else {
            continue;
        };
        let Ok((service, method)) = polycall_core::split_full_name(full) else {
            continue;
        };
        let (service, method) = (service.as_str().to_owned(), method.as_str().to_owned());
        let mut side = |key: &str, suffix: &str| -> MethodType {
            let hint = m[key].as_str().unwrap_or_default();
            match parse_hint(hint) {
                Some(fields) => {
                    let name = format!("{}{}{suffix}", pascal(&service), pascal(&method));
                    messages.push(Message {
                        name: name.clone(),
                        doc: format!("{suffix} of `{full}` (from its hint `{}`).", hint.trim()),
                        fields,
                    });
                    MethodType::Message(name)
                }
                None => MethodType::Raw,
            }
        };
        let input = side("input", "Input");
        let output = side("output", "Output");
        let entry = Method {
            name: method,
            doc: m["summary"].as_str().unwrap_or_default().to_owned(),
            idempotent: m["idempotent"].as_bool().unwrap_or(false),
            kind: serde_json::from_value(m["kind"].clone()).unwrap_or_default(),
            input,
            output,
        };
        match services.iter_mut().find(|s| s.name == service) {
            Some(s) => s.methods.push(entry),
            None => services.push(Service {
                name: service,
                doc: String::new(),
                methods: vec![entry],
            }),
        }
    }
    Ok(Schema {
        doc: format!("The methods a polycall runtime at {endpoint} served when asked."),
        source: format!("sys.describe of {endpoint}"),
        services,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_in_bindgen_grammar_become_messages_others_raw() {
        let d = serde_json::json!({"methods": [
            {"name": "conformance.add", "summary": "adds", "input": "{\"a\": int, \"b\": int}", "output": "{\"sum\": int}", "idempotent": true},
            {"name": "debug.echo", "summary": "returns its input", "input": "any", "output": "the input", "idempotent": true},
            {"name": "debug.sleep", "summary": "sleeps", "input": "{\"ms\": u64}", "output": "", "idempotent": true},
            {"name": "shop.cart.clear", "summary": "", "input": "{}", "output": "bytes", "idempotent": false},
        ]});
        let s = from_describe(&d, "127.0.0.1:1").unwrap();
        let names: Vec<_> = s.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["conformance", "debug", "shop.cart"]);
        let add = &s.services[0].methods[0];
        assert_eq!(add.input, MethodType::Message("ConformanceAddInput".into()));
        assert!(add.idempotent);
        let input = s.message("ConformanceAddInput").unwrap();
        assert_eq!(input.fields.len(), 2);
        assert_eq!(input.fields[1].ty, FieldType::Int);
        // `u64` is not a bindgen type: raw.
        assert_eq!(s.services[1].methods[1].input, MethodType::Raw);
        assert_eq!(s.services[1].methods[0].output, MethodType::Raw);
        assert_eq!(
            s.services[2].methods[0].input,
            MethodType::Message("ShopCartClearInput".into())
        );
        assert!(from_describe(&serde_json::json!({"x": 1}), "e").is_err());
    }
}
