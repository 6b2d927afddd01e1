/**
 * The bench client: calls the runtime's `debug.echo` with `--size` bytes, `--inflight`
 * calls in flight on one connection, for `--seconds` after a 1 s warm-up, and prints
 * one JSON line `{"lang", "calls", "seconds", "calls_per_sec"}`.
 *
 *     node dist/bench/client.js --endpoint E --size 64 --inflight 16 --seconds S
 */

import { randomBytes } from "node:crypto";

import { Client, Payload } from "polycall";

import { parseArgs, required } from "../conformance/args.js";

const USAGE = "client.js --endpoint E --size 64 --inflight 16 --seconds S";
const args = parseArgs(process.argv.slice(2), USAGE);
const endpoint = required(args, "endpoint", USAGE);
const size = Number(args.get("size")?.[0] ?? "64");
const inflight = Number(args.get("inflight")?.[0] ?? "16");
const seconds = Number(required(args, "seconds", USAGE));
if (!(size >= 0 && inflight >= 1 && seconds > 0)) {
  process.stderr.write(`--size, --inflight and --seconds must be positive\nusage: ${USAGE}\n`);
  process.exit(2);
}

const client = await Client.connect(endpoint);
const payload = Payload.raw(new Uint8Array(randomBytes(size)));

let counting = false;
let calls = 0;
let stop = false;

async function worker(): Promise<void> {
  while (!stop) {
    const r = await client.call("debug", "echo", payload);
    if (r.length !== size) throw new Error(`debug.echo answered ${r.length} bytes, not ${size}`);
    if (counting) calls++;
  }
}

const workers = Array.from({ length: inflight }, () => worker());
await new Promise((r) => setTimeout(r, 1000));
counting = true;
const start = performance.now();
await new Promise((r) => setTimeout(r, seconds * 1000));
counting = false;
const elapsed = (performance.now() - start) / 1000;
stop = true;
await Promise.all(workers);
await client.close();
process.stdout.write(
  `${JSON.stringify({ lang: "node", calls, seconds: Number(elapsed.toFixed(3)), calls_per_sec: Number((calls / elapsed).toFixed(1)) })}\n`,
);
