/**
 * Client and Provider over real loopback sockets, against a small server built on the
 * same state machine (server role): deadlines, cancellation, large payloads, a server
 * that vanishes, and a provider serving calls the server opens towards it.
 */

import assert from "node:assert/strict";
import * as net from "node:net";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { Client } from "../src/client.js";
import { type ConnectionEvent, Connection, defaultConnectionConfig } from "../src/connection.js";
import { defaultSettings } from "../src/handshake.js";
import { Payload } from "../src/payload.js";
import { Methods, Provider } from "../src/provider.js";
import { PolycallError } from "../src/status.js";

/** One accepted connection of the test server. */
class ServerConn {
  readonly conn = new Connection("server", defaultConnectionConfig(defaultSettings()));
  readonly seen: ConnectionEvent[] = [];
  private waiters: (() => void)[] = [];

  constructor(
    readonly socket: net.Socket,
    onEvent: (sc: ServerConn, e: ConnectionEvent) => void,
  ) {
    socket.on("data", (b) => {
      try {
        this.conn.feed(b);
      } catch {
        // closed: the error frame goes out below
      }
      for (let e = this.conn.pollEvent(); e !== undefined; e = this.conn.pollEvent()) {
        this.seen.push(e);
        onEvent(this, e);
      }
      this.flush();
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on("error", () => {});
  }

  flush(): void {
    for (const c of this.conn.pollTransmit(1 << 30)) this.socket.write(c);
  }

  /** Waits until an event matching `pred` has been seen. */
  async until(pred: (e: ConnectionEvent) => boolean): Promise<ConnectionEvent> {
    for (;;) {
      const e = this.seen.find(pred);
      if (e !== undefined) return e;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
}

/** A server whose calls `echo.*` answer their payload (after `delay` ms when the payload is JSON `{delay}`). */
async function testServer(): Promise<{ endpoint: string; conns: ServerConn[]; server: net.Server }> {
  const conns: ServerConn[] = [];
  const server = net.createServer((socket) => {
    const sc = new ServerConn(socket, (sc, e) => {
      if (e.type === "register") sc.conn.sendReply(e.callId, Payload.raw(new Uint8Array(0)));
      if (e.type !== "call") return;
      if (e.service === "echo") {
        const delay = e.payload.contentType === "json" ? (e.payload.json<{ delay?: number }>().delay ?? 0) : 0;
        setTimeout(() => {
          if (!sc.conn.isCallOpen(e.callId)) return;
          sc.conn.sendReply(e.callId, e.payload);
          sc.flush();
        }, delay);
      } else if (e.service === "drop") {
        socket.destroy();
      } else {
        sc.conn.sendError(e.callId, new PolycallError("unknown_method", `no ${e.service}.${e.method}`));
      }
    });
    conns.push(sc);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address() as net.AddressInfo;
  return { endpoint: `127.0.0.1:${addr.port}`, conns, server };
}

const srv = await testServer();
after(() => srv.server.close());

test("calls, typed errors and 8 MiB both ways over a socket", async () => {
  const c = await Client.connect(srv.endpoint);
  assert.equal((await c.call("echo", "x", Payload.raw("hi"))).text(), "hi");
  await assert.rejects(c.call("nope", "x", Payload.raw("")), (e: unknown) => e instanceof PolycallError && e.code === "unknown_method");
  const big = new Uint8Array(8 * 1024 * 1024).map((_, i) => (i * 2654435761) >>> 24);
  const back = await c.call("echo", "big", big);
  assert.equal(Buffer.compare(Buffer.from(back.bytes), Buffer.from(big)), 0);
  assert.ok((await c.ping()) >= 0);
  await c.close();
  assert.equal((await c.closed).code, "ok");
});

test("a deadline fails the call in time and cancels it at the server", async () => {
  const c = await Client.connect(srv.endpoint);
  const sc = srv.conns.at(-1)!;
  const t0 = performance.now();
  await assert.rejects(
    c.callJson("echo", "slow", { delay: 2000 }, { deadlineMs: 100 }),
    (e: unknown) => e instanceof PolycallError && e.code === "deadline_exceeded",
  );
  assert.ok(performance.now() - t0 < 1000);
  const call = await sc.until((e) => e.type === "call");
  assert.ok(call.type === "call");
  assert.ok(call.meta.timeoutUs !== undefined && call.meta.timeoutUs <= 100_000n && call.meta.timeoutUs > 0n);
  await sc.until((e) => e.type === "cancelled");
  await c.close();
});

test("aborting a signal cancels the call", async () => {
  const c = await Client.connect(srv.endpoint);
  const sc = srv.conns.at(-1)!;
  const ac = new AbortController();
  const p = c.callJson("echo", "slow", { delay: 2000 }, { signal: ac.signal });
  await sc.until((e) => e.type === "call");
  ac.abort();
  await assert.rejects(p, (e: unknown) => e instanceof PolycallError && e.code === "cancelled");
  await sc.until((e) => e.type === "cancelled");
  assert.equal(c.inFlight, 0);
  await c.close();
});

test("a connection that drops fails its calls with unavailable", async () => {
  const c = await Client.connect(srv.endpoint);
  const slow = c.callJson("echo", "slow", { delay: 5000 });
  await assert.rejects(c.call("drop", "now", Payload.raw("")), (e: unknown) => e instanceof PolycallError && e.code === "unavailable");
  await assert.rejects(slow, (e: unknown) => e instanceof PolycallError && e.code === "unavailable");
  assert.equal((await c.closed).code, "unavailable");
  await assert.rejects(c.call("echo", "x", Payload.raw("")), (e: unknown) => e instanceof PolycallError && e.code === "unavailable");
});

test("connecting to nothing fails with unavailable", async () => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  await assert.rejects(Client.connect(`127.0.0.1:${port}`), (e: unknown) => e instanceof PolycallError && e.code === "unavailable");
  await assert.rejects(Client.connect("no-port"), (e: unknown) => e instanceof PolycallError && e.code === "invalid_input");
});

test("a provider registers, serves concurrently, honours deadlines and cancels", async () => {
  let aborted = 0;
  const methods = new Methods()
    .add("calc.add", (p) => {
      const v = p.json<{ a: number; b: number }>();
      return Payload.json({ sum: v.a + v.b });
    }, { summary: "adds", idempotent: true })
    .add("calc.fail", () => {
      throw new PolycallError("invalid_input", "bad x");
    })
    .add("calc.crash", () => {
      throw new Error("boom");
    })
    .add("calc.wait", async (_p, ctx) => {
      try {
        await sleep(5000, undefined, { signal: ctx.signal });
      } catch (e) {
        aborted++;
        throw e;
      }
      return new Uint8Array(0);
    });
  const provider = await Provider.connect(srv.endpoint, methods);
  const sc = srv.conns.at(-1)!;
  const reg = await sc.until((e) => e.type === "register");
  assert.ok(reg.type === "register");
  assert.deepEqual(reg.methods.map((m) => m.name), ["calc.add", "calc.fail", "calc.crash", "calc.wait"]);
  assert.equal(reg.methods[0]!.idempotent, true);

  const ids = Array.from({ length: 100 }, (_, i) => sc.conn.openCall("calc", "add", Payload.json({ a: i, b: 1 })));
  const failId = sc.conn.openCall("calc", "fail", Payload.json({}));
  const crashId = sc.conn.openCall("calc", "crash", Payload.json({}));
  const unknownId = sc.conn.openCall("calc", "nope", Payload.json({}));
  const deadlineId = sc.conn.openCall("calc", "wait", Payload.raw(""), { timeoutUs: 50_000n });
  const cancelId = sc.conn.openCall("calc", "wait", Payload.raw(""));
  sc.flush();
  const answered = (id: number) => sc.until((e) => (e.type === "reply" || e.type === "failed") && e.callId === id);
  for (const [i, id] of ids.entries()) {
    const e = await answered(id);
    assert.ok(e.type === "reply");
    assert.deepEqual(e.payload.json(), { sum: i + 1 });
  }
  const code = async (id: number) => {
    const e = await answered(id);
    return e.type === "failed" ? e.error.code : "ok";
  };
  assert.equal(await code(failId), "invalid_input");
  assert.equal(await code(crashId), "internal");
  assert.equal(await code(unknownId), "unknown_method");
  assert.equal(await code(deadlineId), "deadline_exceeded");
  sc.conn.cancel(cancelId);
  sc.flush();
  for (let i = 0; i < 50 && aborted < 2; i++) await sleep(20);
  assert.equal(aborted, 2, "the handlers saw their deadline and their cancel");
  assert.equal(provider.serving, 0);
  await provider.close();
});
