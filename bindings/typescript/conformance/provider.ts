/**
 * The conformance provider: registers SERVICE.{echo,add,fail,sleep,exit_now} and the
 * streaming SERVICE.{count,total,relay} with the runtime (the generated
 * `ConformanceProvider`), prints `ready` once registered and serves until killed.
 *
 *     node dist/conformance/provider.js --endpoint HOST:PORT --service NAME
 */

import { setTimeout as sleep } from "node:timers/promises";

import { type CallContext, Methods, PolycallError, Provider, isCode } from "polycall";

import {
  type AddInput,
  type AddOutput,
  ConformanceProvider,
  type CountInput,
  type Counted,
  type Empty,
  type FailInput,
  type Term as NumberMessage,
  type SleepInput,
  type Total,
} from "../generated/conformance.js";
import { parseArgs, required } from "./args.js";

const USAGE = "provider.js --endpoint HOST:PORT --service NAME";

class Conformance extends ConformanceProvider {
  echo(request: Uint8Array): Uint8Array {
    return request;
  }

  add(request: AddInput): AddOutput {
    return { sum: request.a + request.b };
  }

  fail(request: FailInput): Empty {
    if (!isCode(request.code)) {
      throw new PolycallError("invalid_input", `${JSON.stringify(request.code)} is not a status code name`);
    }
    throw new PolycallError(request.code, request.message);
  }

  async sleep(request: SleepInput, ctx: CallContext): Promise<Empty> {
    await sleep(request.ms, undefined, { signal: ctx.signal });
    return {};
  }

  exitNow(): Uint8Array {
    // A provider that disconnects mid-call: no reply, no goodbye.
    process.exit(0);
  }

  async *count(request: CountInput): AsyncIterable<Counted> {
    for (let i = 0; i < request.n; i++) {
      if (request.failAfter !== null && request.failAfter !== undefined && i === request.failAfter) {
        throw new PolycallError("failed_precondition", `count failed after ${request.failAfter} messages, as asked`);
      }
      yield { i };
    }
  }

  async total(requests: AsyncIterable<NumberMessage>): Promise<Total> {
    let sum = 0;
    for await (const r of requests) sum += r.n;
    return { sum };
  }

  async *relay(requests: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
    for await (const message of requests) yield message;
  }
}

const args = parseArgs(process.argv.slice(2), USAGE);
const endpoint = required(args, "endpoint", USAGE);
const service = required(args, "service", USAGE);

try {
  const provider = await Provider.connect(endpoint, new Conformance().register(new Methods(), service));
  process.stdout.write("ready\n");
  const why = await provider.closed;
  process.stderr.write(`conformance provider: connection ended: ${why.message}\n`);
  process.exit(1);
} catch (e) {
  process.stderr.write(`conformance provider: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
