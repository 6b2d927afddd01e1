"""The golden vectors of the protocol (tests/vectors/): every frame decodes to its
stated meaning and re-encodes to the same bytes; every malformed input fails with its
stated error."""

from __future__ import annotations

import json
import pathlib
import unittest

from polycall import frame as F

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors"


def _meta(m: F.Meta) -> dict:
    o: dict = {}
    if m.timeout_us is not None:
        o["timeout_us"] = m.timeout_us
    if m.priority is not None:
        o["priority"] = F.PRIORITIES[m.priority]
    if m.traceparent is not None:
        t = m.traceparent
        o["traceparent"] = f"00-{t[:16].hex()}-{t[16:24].hex()}-{t[24]:02x}"
        if m.tracestate is not None:
            o["tracestate"] = m.tracestate
    if m.idempotent:
        o["idempotent"] = True
    if m.idempotency_key is not None:
        o["idempotency_key"] = m.idempotency_key
    if m.principal is not None:
        o["principal"] = m.principal
    if m.extensions:
        o["extensions"] = [{"tag": t, "value_hex": v.hex()} for t, v in m.extensions]
    return o


def _limits(l: F.Limits) -> dict:
    return {
        "max_frame": l.max_frame,
        "max_message": l.max_message,
        "max_in_flight": l.max_in_flight,
        "initial_window": l.initial_window,
    }


def frame_to_json(f: F.Frame) -> dict:
    """What a frame means, in the vectors' JSON form."""
    ct = F.CONTENT_TYPES
    cp = F.COMPRESSIONS
    if isinstance(f, F.Hello):
        return {"type": "hello", "min_version": f.min_version, "max_version": f.max_version,
                "features": f.features, "limits": _limits(f.limits), "codecs": f.codecs,
                "compressions": f.compressions, "auth_methods": f.auth_methods, "agent": f.agent}
    if isinstance(f, F.Welcome):
        return {"type": "welcome", "version": f.version, "features": f.features,
                "limits": _limits(f.limits), "codecs": f.codecs, "compressions": f.compressions,
                "auth_method": f.auth_method, "agent": f.agent}
    if isinstance(f, F.Auth):
        return {"type": "auth", "method": f.method, "step": f.step, "data_hex": f.data.hex()}
    if isinstance(f, F.Call):
        return {"type": "call", "call_id": f.call_id, "method_id": f.method_id,
                "method_name": f.method_name, "content_type": ct[f.content_type],
                "compression": cp[f.compression], "meta": _meta(f.meta), "more": f.more,
                "message_len": f.message_len, "stream": f.stream, "empty": f.empty,
                "payload_hex": f.payload.hex()}
    if isinstance(f, F.Reply):
        return {"type": "reply", "call_id": f.call_id, "content_type": ct[f.content_type],
                "compression": cp[f.compression], "more": f.more, "message_len": f.message_len,
                "stream": f.stream, "empty": f.empty, "payload_hex": f.payload.hex()}
    if isinstance(f, F.Error):
        from polycall.errors import code_name
        return {"type": "error", "call_id": f.call_id, "code": f.code, "code_name": code_name(f.code),
                "message": f.message, "retry_after_ms": f.retry_after_ms,
                "supported_versions": list(f.supported_versions) if f.supported_versions else None,
                "extensions": [{"tag": t, "value_hex": v.hex()} for t, v in f.extensions]}
    if isinstance(f, F.Cancel):
        return {"type": "cancel", "call_id": f.call_id}
    if isinstance(f, F.Data):
        first = None if f.first is None else {"content_type": ct[f.first[0]], "compression": cp[f.first[1]]}
        return {"type": "data", "call_id": f.call_id, "first": first, "more": f.more,
                "message_len": f.message_len, "payload_hex": f.payload.hex()}
    if isinstance(f, F.End):
        return {"type": "end", "call_id": f.call_id}
    if isinstance(f, F.Ping):
        return {"type": "ping", "opaque": f.opaque}
    if isinstance(f, F.Pong):
        return {"type": "pong", "opaque": f.opaque}
    if isinstance(f, F.GoAway):
        return {"type": "goaway", "last_call_id": f.last_call_id, "code": f.code, "message": f.message}
    if isinstance(f, F.Credit):
        return {"type": "credit", "increment": f.increment}
    if isinstance(f, F.StreamCredit):
        return {"type": "stream_credit", "call_id": f.call_id, "increment": f.increment}
    if isinstance(f, F.Dictionary):
        return {"type": "dictionary", "id": f.id, "data_hex": f.data.hex()}
    if isinstance(f, F.Register):
        return {"type": "register", "call_id": f.call_id, "methods": [
            {"name": m.name, "idempotent": m.idempotent, "kind": m.kind, "summary": m.summary,
             "input": m.input, "output": m.output} for m in f.methods]}
    if isinstance(f, F.Unregister):
        return {"type": "unregister", "call_id": f.call_id, "methods": list(f.methods)}
    raise AssertionError(f"unknown frame {f!r}")


class GoldenVectors(unittest.TestCase):
    def test_every_golden_frame_decodes_to_its_meaning_and_back(self) -> None:
        doc = json.loads((VECTORS / "frames.json").read_text())
        self.assertEqual(doc["preface_hex"], F.PREFACE.hex())
        kinds = set()
        self.assertGreaterEqual(len(doc["vectors"]), 20)
        for v in doc["vectors"]:
            with self.subTest(v["name"]):
                raw = bytes.fromhex(v["hex"])
                got = F.decode(raw, 0xFFFFFFFF, v["crc32c"])
                self.assertIsNotNone(got, "incomplete")
                f, used = got
                self.assertEqual(used, len(raw), "bytes left over")
                self.assertEqual(frame_to_json(f), v["frame"])
                self.assertEqual(F.encode(f, v["crc32c"]).hex(), v["hex"])
                # One byte short is incomplete, never an error.
                self.assertIsNone(F.decode(raw[:-1], 0xFFFFFFFF, v["crc32c"]))
                kinds.add(v["frame"]["type"])
        self.assertEqual(kinds, {"hello", "welcome", "auth", "call", "reply", "error", "cancel",
                                 "data", "end", "ping", "pong", "goaway", "credit", "stream_credit", "dictionary",
                                 "register", "unregister"})

    def test_every_malformed_vector_fails_as_stated(self) -> None:
        doc = json.loads((VECTORS / "malformed.json").read_text())
        self.assertGreater(len(doc["vectors"]), 10)
        for v in doc["vectors"]:
            with self.subTest(v["name"]):
                with self.assertRaises(F.FrameError) as cm:
                    F.decode(bytes.fromhex(v["hex"]), v["max_body"], v["crc32c"])
                self.assertEqual(cm.exception.to_json(), v["expect"])

    def test_the_zstd_vector_decompresses_to_its_text(self) -> None:
        from polycall import codec
        # A missing test dependency fails, never skips: `cargo xtask ci` installs it.
        self.assertTrue(
            codec.zstd_available(),
            "the zstd vector needs the zstandard package: `python3 -m pip install zstandard` "
            "(`cargo xtask ci` installs it); POLYCALL_NO_ZSTD must not be set")
        doc = json.loads((VECTORS / "frames.json").read_text())
        v = next(v for v in doc["vectors"] if v["frame"].get("compression") == "zstd")
        out = codec.decompress(F.ZSTD, bytes.fromhex(v["frame"]["payload_hex"]), 1 << 20)
        self.assertEqual(out, b'{"a":1}' * 8)


if __name__ == "__main__":
    unittest.main()
