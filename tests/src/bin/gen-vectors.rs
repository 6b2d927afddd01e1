//! Writes the golden vectors to `tests/vectors/` (run after a deliberate protocol change).

use std::path::PathBuf;

use bytes::BytesMut;
use polycall_proto::frame;
use polycall_tests::{error_to_json, frame_to_json, hex, malformed_vectors, unhex, vector_frames};
use serde_json::json;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors");
    std::fs::create_dir_all(&dir)?;
    let frames: Vec<_> = vector_frames()
        .into_iter()
        .map(|(name, f, crc)| json!({"name": name, "crc32c": crc, "hex": hex(&f.to_bytes(crc)), "frame": frame_to_json(&f)}))
        .collect();
    let doc = json!({
        "description": "polycall protocol v1 golden frames: each hex decodes to `frame` and re-encodes to the same bytes. `crc32c`: the frame carries the CRC32C trailer (negotiated). See docs/protocol.md.",
        "preface_hex": hex(&polycall_proto::PREFACE),
        "vectors": frames,
    });
    std::fs::write(
        dir.join("frames.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let bad: Vec<_> = malformed_vectors()
        .into_iter()
        .map(|(name, h, crc, max)| {
            let bytes = unhex(h);
            let mut buf = BytesMut::from(&bytes[..]);
            let err = frame::decode(&mut buf, max, crc).expect_err(name);
            json!({"name": name, "crc32c": crc, "max_body": max, "hex": hex(&bytes), "expect": error_to_json(&err)})
        })
        .collect();
    let doc = json!({
        "description": "polycall protocol v1 malformed frames: decoding `hex` with the frame body limit `max_body` must fail with `expect`. Frame types in errors are type bytes.",
        "vectors": bad,
    });
    std::fs::write(
        dir.join("malformed.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}
