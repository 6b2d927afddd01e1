"""Generated stubs and their support: checked JSON conversion of messages (nested,
lists, optional fields, bytes as base64), and a typed provider and client talking
through a real connection pair on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sys
import unittest
from typing import Optional

import polycall
from polycall import stubs as _s

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "conformance"))
from generated import conformance as gen  # noqa: E402


@dataclasses.dataclass(kw_only=True)
class Photo:
    data: bytes
    _polycall_fields = (("data", "data", _s.BYTES),)


@dataclasses.dataclass(kw_only=True)
class Item:
    name: str
    tags: list[str]
    weight: float
    photo: Optional[Photo] = None
    next: Optional["Item"] = None
    _polycall_fields = (
        ("name", "name", _s.STRING),
        ("tags", "tags", _s.list_of(_s.STRING)),
        ("weight", "weight", _s.FLOAT),
        ("photo", "photo", _s.optional(_s.message(lambda: Photo))),
        ("next", "next", _s.optional(_s.message(lambda: Item))),
    )


class ConversionTests(unittest.TestCase):
    def test_messages_round_trip_through_json(self) -> None:
        item = Item(name="a", tags=["x", "y"], weight=2, photo=Photo(data=b"\x00\xff"),
                    next=Item(name="b", tags=[], weight=0.5))
        j = _s.to_json(item, _s.message(lambda: Item))
        self.assertEqual(j, {"name": "a", "tags": ["x", "y"], "weight": 2.0, "photo": {"data": "AP8="},
                             "next": {"name": "b", "tags": [], "weight": 0.5}})
        back = _s.from_json(j, _s.message(lambda: Item))
        self.assertEqual(back, Item(name="a", tags=["x", "y"], weight=2.0, photo=Photo(data=b"\x00\xff"),
                                    next=Item(name="b", tags=[], weight=0.5)))

    def test_values_that_do_not_fit_are_refused_with_their_path(self) -> None:
        t = _s.message(lambda: Item)
        bad = [
            ({"name": "a", "tags": ["x", 3], "weight": 1}, "$.tags[1]"),
            ({"name": "a", "tags": [], "weight": "heavy"}, "$.weight"),
            ({"tags": [], "weight": 1}, "'name' is missing"),
            ({"name": "a", "tags": [], "weight": 1, "photo": {"data": "not base64!"}}, "$.photo.data"),
            ([], "expected an object"),
        ]
        for value, where in bad:
            with self.assertRaises(_s.ConversionError) as cm:
                _s.from_json(value, t)
            self.assertIn(where, str(cm.exception))
        with self.assertRaises(_s.ConversionError):
            _s.to_json(gen.AddInput(a=True, b=1), _s.message(lambda: gen.AddInput))
        with self.assertRaises(_s.ConversionError):
            _s.to_json(1 << 64, _s.INT)

    def test_the_generated_module_describes_the_conformance_interface(self) -> None:
        self.assertEqual(gen.SERVICE, "conformance")
        self.assertEqual([f[0] for f in gen.AddInput._polycall_fields], ["a", "b"])
        methods = [m for m in dir(gen.ConformanceClient) if not m.startswith("_")]
        self.assertEqual(sorted(methods), ["add", "echo", "exit_now", "fail", "sleep"])


class TypedEndToEnd(unittest.IsolatedAsyncioTestCase):
    async def test_a_typed_provider_and_client_over_loopback(self) -> None:
        """A minimal in-process runtime stand-in: the provider's connection is the
        'server' for the client's calls, relayed by a tiny router."""
        from polycall import frame as F

        provider = polycall.Provider("unused:0")

        class Impl(gen.ConformanceProvider):
            async def add(self, request: gen.AddInput, ctx: polycall.CallContext) -> gen.AddOutput:
                return gen.AddOutput(sum=request.a + request.b)

        Impl().register(provider, "calc")
        self.assertEqual(provider.methods, [f"calc.{m}" for m in ("echo", "add", "fail", "sleep", "exit_now")])

        # Route: accept the client, open each of its calls on the provider's handler.
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(8) == F.PREFACE
            buf = bytearray()
            while True:
                got = F.decode(buf, 1 << 20, False)
                if got:
                    break
                buf += await reader.read(4096)
            hello, used = got
            del buf[:used]
            writer.write(F.PREFACE + F.encode(F.Welcome(1, 0, F.Limits(), [1, 0], [0], 0, "relay")))
            names: dict[int, str] = {}
            while True:
                got = F.decode(buf, 1 << 20, False)
                if not got:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                f, used = got
                del buf[:used]
                if isinstance(f, F.Call):
                    if f.method_name:
                        names[f.method_id] = f.method_name
                    method = f.method_name or names[f.method_id]
                    ctx = polycall.CallContext(method, f.meta, None, f.call_id)
                    try:
                        r = await provider._dispatch(polycall.IncomingCall(method, f.payload, f.content_type, ctx))
                        writer.write(F.encode(F.Reply(f.call_id, r.content_type, 0, False, None, False, r.data)))
                    except polycall.PolycallError as e:
                        writer.write(F.encode(F.Error(f.call_id, e.code, e.message)))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = await polycall.Client.connect(f"127.0.0.1:{port}")
        calc = gen.ConformanceClient(client, "calc")
        self.assertEqual(await calc.add(gen.AddInput(a=2, b=40)), gen.AddOutput(sum=42))
        with self.assertRaises(polycall.UnsupportedError):
            await calc.echo(b"x")  # not implemented by Impl
        with self.assertRaises(polycall.InvalidInputError) as cm:
            await client.call_json("calc.add", {"a": "two", "b": 1})
        self.assertIn("$.a", cm.exception.message)
        with self.assertRaises(TypeError):
            await calc.add(gen.AddInput(a="2", b=1))
        await client.close()
        server.close()


if __name__ == "__main__":
    unittest.main()
