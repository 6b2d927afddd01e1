//! The canonical encoding integrity hashes are computed over: JSON with object keys
//! sorted at every level and no whitespace, whatever order the maps were built in.

use serde_json::Value;

/// `v` in canonical form.
///
/// ```
/// use serde_json::json;
/// assert_eq!(polycall_state::canonical::to_string(&json!({"b": 1, "a": [true, {"d": 2, "c": null}]})),
///            r#"{"a":[true,{"c":null,"d":2}],"b":1}"#);
/// ```
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
