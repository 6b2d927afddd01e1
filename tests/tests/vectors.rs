//! The golden vectors: every frame decodes to its stated meaning and re-encodes to the
//! same bytes; every malformed input fails with its stated error.

use bytes::BytesMut;
use polycall_proto::frame;
use polycall_tests::{error_to_json, frame_to_json, hex, unhex};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn every_golden_frame_decodes_to_its_meaning_and_back() {
    let doc = load("frames.json");
    assert_eq!(doc["preface_hex"], hex(&polycall_proto::PREFACE));
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 20);
    let mut kinds = std::collections::BTreeSet::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let crc = v["crc32c"].as_bool().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let mut buf = BytesMut::from(&bytes[..]);
        let f = frame::decode(&mut buf, u32::MAX, crc)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert!(buf.is_empty(), "{name}: bytes left over");
        assert_eq!(frame_to_json(&f), v["frame"], "{name}: meaning");
        assert_eq!(
            hex(&f.to_bytes(crc)),
            v["hex"].as_str().unwrap(),
            "{name}: re-encoding"
        );
        kinds.insert(v["frame"]["type"].as_str().unwrap().to_owned());
    }
    let all = [
        "hello",
        "welcome",
        "auth",
        "call",
        "reply",
        "error",
        "cancel",
        "data",
        "end",
        "ping",
        "pong",
        "goaway",
        "credit",
        "dictionary",
        "register",
        "unregister",
    ];
    for k in all {
        assert!(kinds.contains(k), "no vector of frame type {k}");
    }
}

#[test]
fn every_malformed_vector_fails_as_stated() {
    let doc = load("malformed.json");
    for v in doc["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let mut buf = BytesMut::from(&bytes[..]);
        let max = v["max_body"].as_u64().unwrap() as u32;
        let err = frame::decode(&mut buf, max, v["crc32c"].as_bool().unwrap()).expect_err(name);
        assert_eq!(error_to_json(&err), v["expect"], "{name}");
    }
}

#[test]
fn the_zstd_vector_decompresses_to_its_text() {
    let doc = load("frames.json");
    let v = doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["frame"]["compression"] == "zstd")
        .unwrap();
    let payload = unhex(v["frame"]["payload_hex"].as_str().unwrap());
    let mut d = polycall_proto::compress::Decompressor::new();
    let out = d
        .decompress(polycall_proto::compress::Algorithm::Zstd, &payload, 1 << 20)
        .unwrap();
    assert_eq!(out, br#"{"a":1}"#.repeat(8));
}
