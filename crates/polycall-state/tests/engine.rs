//! The machine semantics, without a store: transitions, guards, actions, hierarchy,
//! parallel regions, locks, permissions, final states, snapshots.

use polycall_state::{
    Inherit, InstanceState, Machine, MachineDef, StateDef, StateError, TransitionDef,
    TransitionKind, load,
};
use serde_json::json;

fn order() -> Machine {
    load::from_str(include_str!("machines/order.toml"), "order.toml").unwrap()
}

fn state(parent: Option<&str>, name: &str) -> StateDef {
    StateDef {
        name: name.into(),
        parent: parent.map(Into::into),
        ..StateDef::default()
    }
}

#[test]
fn transitions_run_exit_action_enter_in_order_and_bump_versions() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    assert_eq!(s.current(&m), vec!["draft"]);
    assert_eq!(
        s.context["edits"],
        json!(1),
        "draft's on_enter ran on creation"
    );
    let fired = s
        .fire(&m, "submit", &json!({"total": 30}), Some("user:alice"))
        .unwrap();
    assert_eq!(fired.exited, vec!["draft"]);
    assert_eq!(
        fired.entered,
        vec!["active", "review"],
        "parent before child, initial child entered"
    );
    assert_eq!(s.context["total"], json!(30));
    assert_eq!(s.current(&m), vec!["review"]);
    // Back to draft from anywhere inside active: exits child then parent.
    let fired = s.fire(&m, "edit", &json!({}), Some("user:alice")).unwrap();
    assert_eq!(fired.exited, vec!["review", "active"]);
    assert_eq!(s.versions["draft"], 2);
    assert_eq!(s.context["edits"], json!(2));
    assert_eq!(s.events, 2);
}

#[test]
fn a_transition_from_another_state_fails_and_changes_nothing() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    let before = s.clone();
    let err = s.fire(&m, "ship", &json!({}), None).unwrap_err();
    assert!(matches!(err, StateError::NotFromCurrent { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "`ship` fires from approved but the instance is in draft"
    );
    assert_eq!(s, before);
    let err = s.fire(&m, "teleport", &json!({}), None).unwrap_err();
    assert!(matches!(err, StateError::UnknownTransition { .. }), "{err}");
}

#[test]
fn guards_decide_and_a_failing_guard_is_an_error() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    let err = s
        .fire(&m, "submit", &json!({"total": 0}), None)
        .unwrap_err();
    assert!(matches!(err, StateError::GuardRejected { .. }), "{err}");
    assert!(err.to_string().contains("event.total > 0"), "{err}");
    let err = s
        .fire(&m, "submit", &json!({"amount": 3}), None)
        .unwrap_err();
    assert!(
        matches!(err, StateError::Guard(_)),
        "a missing field is an evaluation error: {err}"
    );
    assert_eq!(s.current(&m), vec!["draft"]);
}

#[test]
fn a_final_state_stays_final() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    for t in ["submit", "approve", "ship"] {
        s.fire(&m, t, &json!({"total": 1}), Some("user:bob"))
            .unwrap();
    }
    assert!(s.is_final(&m));
    for t in ["edit", "submit", "approve"] {
        assert!(
            s.fire(&m, t, &json!({"total": 1}), Some("user:bob"))
                .is_err()
        );
    }
    // A transition out of a final state is refused when the machine is compiled.
    let def = MachineDef::builder("m", "a")
        .state("a")
        .final_state("z")
        .transition("end", "a", "z")
        .transition("again", "z", "a")
        .build();
    let errs = Machine::compile(def).unwrap_err();
    assert!(
        errs.to_string().contains("a final state stays final"),
        "{errs}"
    );
    // And one from an ancestor that would exit a final child fails when fired.
    let def = MachineDef::builder("job", "job")
        .state_def(StateDef {
            initial: Some("running".into()),
            ..state(None, "job")
        })
        .state_def(state(Some("job"), "running"))
        .state_def(StateDef {
            terminal: true,
            ..state(Some("job"), "done")
        })
        .transition("finish", "running", "done")
        .transition("restart", "job", "job")
        .build();
    let m = Machine::compile(def).unwrap();
    let mut s = InstanceState::new(&m, "j", json!({})).unwrap();
    s.fire(&m, "finish", &json!({}), None).unwrap();
    assert_eq!(
        s.fire(&m, "restart", &json!({}), None).unwrap_err(),
        StateError::Final("done".into())
    );
}

#[test]
fn permissions_inherit_additive_replace_subtractive_none() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    s.fire(&m, "submit", &json!({"total": 5}), None).unwrap(); // draft: anyone
    // review: additive = active's user:* plus role:reviewer.
    let denied = s
        .fire(&m, "approve", &json!({}), Some("service:billing"))
        .unwrap_err();
    assert!(
        matches!(denied, StateError::PermissionDenied(_)),
        "{denied}"
    );
    assert!(
        s.clone()
            .fire(&m, "approve", &json!({}), Some("role:reviewer"))
            .is_ok()
    );
    assert!(
        s.clone()
            .fire(&m, "approve", &json!({}), Some("user:carol"))
            .is_ok()
    );
    assert!(
        s.clone().fire(&m, "approve", &json!({}), None).is_err(),
        "anonymous is not user:*"
    );
    s.fire(&m, "approve", &json!({}), Some("user:carol"))
        .unwrap();
    // approved: replace = active's list only.
    assert!(
        s.clone()
            .fire(&m, "ship", &json!({}), Some("role:reviewer"))
            .is_err()
    );
    assert!(
        s.clone()
            .fire(&m, "ship", &json!({}), Some("user:dan"))
            .is_ok()
    );

    let def = MachineDef::builder("p", "top")
        .state_def(StateDef {
            initial: Some("sub".into()),
            permissions: vec!["a".into(), "b".into()],
            ..state(None, "top")
        })
        .state_def(StateDef {
            initial: Some("leaf".into()),
            inherit: Inherit::Subtractive,
            permissions: vec!["a".into()],
            ..state(Some("top"), "sub")
        })
        .state_def(state(Some("sub"), "leaf"))
        .transition("from_sub", "sub", "leaf")
        .transition("from_leaf", "leaf", "leaf")
        .build();
    let m = Machine::compile(def).unwrap();
    let s = InstanceState::new(&m, "p", json!({})).unwrap();
    assert!(
        s.clone()
            .fire(&m, "from_sub", &json!({}), Some("b"))
            .is_ok()
    );
    assert!(
        s.clone()
            .fire(&m, "from_sub", &json!({}), Some("a"))
            .is_err(),
        "subtracted"
    );
    assert!(
        s.clone()
            .fire(&m, "from_leaf", &json!({}), Some("anyone"))
            .is_ok(),
        "none: leaf's own (empty)"
    );
}

#[test]
fn locked_states_are_neither_left_nor_entered() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({})).unwrap();
    s.set_lock(&m, "active", true).unwrap();
    assert_eq!(
        s.fire(&m, "submit", &json!({"total": 1}), None)
            .unwrap_err(),
        StateError::Locked("active".into())
    );
    s.set_lock(&m, "active", false).unwrap();
    s.set_lock(&m, "draft", true).unwrap();
    assert_eq!(
        s.fire(&m, "submit", &json!({"total": 1}), None)
            .unwrap_err(),
        StateError::Locked("draft".into())
    );
    assert!(
        s.set_lock(&m, "draft", true).is_err(),
        "locking twice is refused"
    );
    assert!(s.set_lock(&m, "nowhere", true).is_err());
    s.set_lock(&m, "draft", false).unwrap();
    s.fire(&m, "submit", &json!({"total": 1}), None).unwrap();
}

#[test]
fn parallel_regions_local_and_internal_transitions() {
    let def = MachineDef::builder("player", "on")
        .state_def(StateDef {
            parallel: true,
            ..state(None, "on")
        })
        .state_def(StateDef {
            initial: Some("stopped".into()),
            ..state(Some("on"), "playback")
        })
        .state_def(state(Some("playback"), "stopped"))
        .state_def(state(Some("playback"), "playing"))
        .state_def(StateDef {
            initial: Some("normal".into()),
            on_enter: vec![("volume_entries".into(), "context.volume_entries + 1".into())],
            ..state(Some("on"), "volume")
        })
        .state_def(state(Some("volume"), "normal"))
        .state_def(state(Some("volume"), "muted"))
        .state("off")
        .transition("play", "stopped", "playing")
        .transition("mute", "normal", "muted")
        .transition_def(TransitionDef {
            name: "reset_volume".into(),
            from: "volume".into(),
            to: "normal".into(),
            kind: TransitionKind::Local,
            ..TransitionDef::default()
        })
        .transition_def(TransitionDef {
            name: "tick".into(),
            from: "playing".into(),
            to: "playing".into(),
            kind: TransitionKind::Internal,
            action: vec![("ticks".into(), "context.ticks + 1".into())],
            ..TransitionDef::default()
        })
        .transition("power", "on", "off")
        .context("volume_entries", json!(0))
        .context("ticks", json!(0))
        .build();
    let m = Machine::compile(def).unwrap();
    let mut s = InstanceState::new(&m, "p", json!({})).unwrap();
    assert_eq!(
        s.current(&m),
        vec!["normal", "stopped"],
        "both regions entered"
    );
    s.fire(&m, "play", &json!({}), None).unwrap();
    s.fire(&m, "mute", &json!({}), None).unwrap();
    assert_eq!(
        s.current(&m),
        vec!["muted", "playing"],
        "regions move independently"
    );
    let f = s.fire(&m, "reset_volume", &json!({}), None).unwrap();
    assert_eq!(f.exited, vec!["muted"], "local: volume itself stays");
    assert_eq!(s.context["volume_entries"], json!(1));
    let f = s.fire(&m, "tick", &json!({}), None).unwrap();
    assert!(f.exited.is_empty() && f.entered.is_empty());
    assert_eq!(s.context["ticks"], json!(1));
    let f = s.fire(&m, "power", &json!({}), None).unwrap();
    assert_eq!(f.exited.len(), 5, "every active state: {:?}", f.exited);
    assert_eq!(s.current(&m), vec!["off"]);
}

#[test]
fn snapshots_verify_integrity_version_and_locks() {
    let m = order();
    let mut s = InstanceState::new(&m, "o1", json!({"note": "x"})).unwrap();
    let snap = s.snapshot();
    snap.verify().unwrap();
    s.fire(&m, "submit", &json!({"total": 9}), None).unwrap();
    s.restore(&m, &snap).unwrap();
    assert_eq!(s.current(&m), vec!["draft"]);
    assert_eq!(s.context["note"], json!("x"));
    // Tampered: refused.
    let mut bad = snap.clone();
    bad.state.context["total"] = json!(1_000_000);
    assert!(matches!(
        s.restore(&m, &bad).unwrap_err(),
        StateError::Integrity(_)
    ));
    // Another machine version: refused.
    let other = load::from_str(
        &include_str!("machines/order.toml").replace("snapshot_every = 4", "snapshot_every = 5"),
        "order2.toml",
    )
    .unwrap();
    assert_ne!(other.version(), m.version());
    assert!(matches!(
        s.restore(&other, &snap).unwrap_err(),
        StateError::VersionMismatch { .. }
    ));
    // A locked instance: refused.
    s.set_lock(&m, "draft", true).unwrap();
    assert!(matches!(
        s.restore(&m, &snap).unwrap_err(),
        StateError::Locked(_)
    ));
    // The hash covers a canonical encoding: key order does not matter.
    let mut a = InstanceState::new(&m, "o2", json!({"a": 1, "b": {"y": 1, "x": 2}})).unwrap();
    let b = InstanceState::new(&m, "o2", json!({"b": {"x": 2, "y": 1}, "a": 1})).unwrap();
    assert_eq!(a.integrity(), b.integrity());
    a.context["a"] = json!(2);
    assert_ne!(a.integrity(), b.integrity());
}
