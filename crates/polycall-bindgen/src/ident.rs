//! Identifier spellings: snake, camel, pascal and upper case from schema names.

/// The words of a name: split at `.`, `-`, `_`, spaces and case changes (`AddInput` →
/// `add`, `input`).
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if matches!(c, '.' | '-' | '_' | ' ' | '/') {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_uppercase() && !cur.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn cap(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `add_input`.
pub fn snake(s: &str) -> String {
    words(s).join("_")
}

/// `ADD_INPUT`.
pub fn upper(s: &str) -> String {
    snake(s).to_uppercase()
}

/// `AddInput`.
pub fn pascal(s: &str) -> String {
    words(s).iter().map(|w| cap(w)).collect()
}

/// `addInput`.
pub fn camel(s: &str) -> String {
    let w = words(s);
    let mut out = w.first().cloned().unwrap_or_default();
    for x in w.iter().skip(1) {
        out.push_str(&cap(x));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(snake("AddInput"), "add_input");
        assert_eq!(pascal("exit_now"), "ExitNow");
        assert_eq!(camel("exit_now"), "exitNow");
        assert_eq!(upper("shop.cart-items"), "SHOP_CART_ITEMS");
        assert_eq!(snake("HTTPServer2Go"), "http_server2_go");
        assert_eq!(pascal("conformance"), "Conformance");
    }
}
