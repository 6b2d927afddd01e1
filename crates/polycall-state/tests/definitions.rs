//! Invalid definitions: every mistake reported at once with file:line:col.

use polycall_state::{Machine, MachineDef, load};

#[test]
fn toml_mistakes_are_reported_with_positions() {
    let errs = load::from_str(include_str!("machines/broken.toml"), "broken.toml").unwrap_err();
    let text = errs.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("broken.toml:14:")
            && l.contains(
                "transition `start` goes to unknown state `runing` (did you mean `running`?)"
            )),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("broken.toml:23:")
            && l.contains("guard `event.code ===` does not compile")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("broken.toml:10:")
                && l.contains("final state `done` is unreachable")),
        "{text}"
    );
}

#[test]
fn syntax_errors_and_unknown_keys_have_positions() {
    let errs = load::from_str(
        "name = \"m\"\ninitial = \"a\"\n[[state]]\nname = \"a\"\nfinale = true\n",
        "m.toml",
    )
    .unwrap_err();
    assert!(
        errs.to_string()
            .starts_with("m.toml:5:1: error: unknown field `finale`"),
        "{errs}"
    );
    let errs = load::from_str("name = \"m\"\ninitial = = \"a\"\n", "m.toml").unwrap_err();
    assert!(errs.to_string().starts_with("m.toml:2:"), "{errs}");
}

#[test]
fn hierarchy_mistakes_are_found() {
    let text = r#"
name = "h"
initial = "a"
[[state]]
name = "a"
parent = "b"
[[state]]
name = "b"
parent = "a"
[[state]]
name = "c"
[[state]]
name = "c"
[[state]]
name = "p"
parallel = true
initial = "c"
"#;
    let errs = load::from_str(text, "h.toml").unwrap_err().to_string();
    for needle in [
        "is its own ancestor",
        "state `c` is defined twice",
        "parallel state `p` enters every child",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
    }
}

#[test]
fn rust_definitions_are_validated_too() {
    let def = MachineDef::builder("m", "nowhere")
        .state("a")
        .guarded("go", "a", "a", "((")
        .build();
    let errs = Machine::compile(def).unwrap_err().to_string();
    assert!(
        errs.contains("initial state `nowhere` is not defined"),
        "{errs}"
    );
    assert!(errs.contains("guard `((` does not compile"), "{errs}");
    let bad_name = MachineDef::builder("has space", "a").state("a").build();
    assert!(Machine::compile(bad_name).is_err());
}

#[test]
fn loading_a_directory_reports_every_file() {
    let dir = std::env::temp_dir().join(format!("polycall-state-defs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("order.toml"), include_str!("machines/order.toml")).unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        include_str!("machines/broken.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "not a machine").unwrap();
    let errs = load::from_dir(&dir).unwrap_err().to_string();
    assert!(errs.contains("broken.toml:14:"), "{errs}");
    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    let machines = load::from_dir(&dir).unwrap();
    assert_eq!(machines.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_eventual_machine_declares_its_crdt_fields_and_its_actions_run() {
    use polycall_state::{FieldKind, InstanceState, Replication};
    let cart = load::from_str(
        include_str!("../../polycall-cli/tests/fixtures/cart.toml"),
        "cart.toml",
    )
    .unwrap();
    let def = cart.definition();
    assert_eq!(def.consistency, Replication::Eventual);
    assert_eq!(def.crdt["visits"], FieldKind::Counter);
    assert_eq!(def.crdt["items"], FieldKind::Set);
    let mut s = InstanceState::new(&cart, "c", serde_json::json!({})).unwrap();
    for (t, event) in [
        ("add", serde_json::json!({"item": "pen"})),
        ("add", serde_json::json!({"item": "ink"})),
        ("remove", serde_json::json!({"item": "pen"})),
        ("visit", serde_json::json!({})),
    ] {
        s.fire(&cart, t, &event, None).unwrap();
    }
    assert_eq!(s.context["items"], serde_json::json!(["ink"]));
    assert_eq!(s.context["visits"], serde_json::json!(1));
}

#[test]
fn crdt_fields_need_an_eventual_machine_and_initial_values_of_their_kind() {
    let text = r#"
name = "m"
initial = "a"
[crdt]
n = "counter"
[context]
n = "zero"
[[state]]
name = "a"
"#;
    let errs = load::from_str(text, "m.toml").unwrap_err().to_string();
    assert!(errs.contains("add consistency = \"eventual\""), "{errs}");
    assert!(
        errs.contains("context field `n` is a counter but its initial value is not an integer"),
        "{errs}"
    );
    let fixed = text
        .replace("[crdt]", "consistency = \"eventual\"\n[crdt]")
        .replace("\"zero\"", "0");
    load::from_str(&fixed, "m.toml").unwrap();
    let unknown = text.replace("\"counter\"", "\"bag\"");
    let errs = load::from_str(&unknown, "m.toml").unwrap_err().to_string();
    assert!(errs.contains("bag"), "{errs}");
}
