/**
 * A provider: connects to a runtime, registers the methods it serves, and answers the
 * calls the runtime routes to it — concurrently, with deadlines and cancellation.
 */

import type * as net from "node:net";

import type { ConnectionEvent } from "./connection.js";
import type { MethodEntry } from "./frame.js";
import type { Settings } from "./handshake.js";
import type { WireMeta } from "./meta.js";
import { splitFullName } from "./names.js";
import { Payload } from "./payload.js";
import { type ConnectOptions, Peer } from "./peer.js";
import { PolycallError } from "./status.js";

/** What a handler knows about the call it serves. */
export interface CallContext {
  /** The service called. */
  service: string;
  /** The method called. */
  method: string;
  /** Deadline, priority, trace context and the rest, as received. */
  meta: WireMeta;
  /** When the call's deadline passes (`performance.now()` milliseconds), if it has one. */
  deadline: number | undefined;
  /** Aborted when the caller cancels, the deadline passes or the connection ends. */
  signal: AbortSignal;
}

/** Serves one method: resolves with the reply or throws a {@link PolycallError}. */
export type Handler = (request: Payload, ctx: CallContext) => Promise<Payload | Uint8Array> | Payload | Uint8Array;

/** What a method says about itself in the registration (shown by `sys.describe`). */
export interface MethodInfo {
  /** One line for people. */
  summary?: string | undefined;
  /** Input schema hint. */
  input?: string | undefined;
  /** Output schema hint. */
  output?: string | undefined;
  /** Calls may be retried safely. */
  idempotent?: boolean | undefined;
}

/** The methods a provider serves, before it connects. */
export class Methods {
  /** Handlers by full name. */
  readonly handlers = new Map<string, { handler: Handler; info: MethodInfo }>();

  /** Adds `SERVICE.METHOD`. Throws `invalid_input` for an invalid name, `already_exists` for a second handler. */
  add(fullName: string, handler: Handler, info: MethodInfo = {}): this {
    if (splitFullName(fullName) === null) {
      throw new PolycallError("invalid_input", `${JSON.stringify(fullName)} is not a valid SERVICE.METHOD name`);
    }
    if (this.handlers.has(fullName)) throw new PolycallError("already_exists", `${fullName} has a handler already`);
    this.handlers.set(fullName, { handler, info });
    return this;
  }

  /** The REGISTER entries. */
  entries(): MethodEntry[] {
    return [...this.handlers].map(([name, { info }]) => ({
      name,
      idempotent: info.idempotent ?? false,
      summary: info.summary ?? "",
      input: info.input ?? "",
      output: info.output ?? "",
    }));
  }
}

interface Running {
  controller: AbortController;
  timer: NodeJS.Timeout | undefined;
}

/**
 * A connection to a runtime that serves methods (and may call others).
 *
 * ```ts
 * const methods = new Methods().add("calc.add", (req) => Payload.json({ sum: req.json<{a: number; b: number}>().a + 1 }));
 * const provider = await Provider.connect("127.0.0.1:7464", methods);
 * await provider.closed; // serves until the connection ends
 * ```
 */
export class Provider extends Peer {
  private readonly running = new Map<number, Running>();
  private methods: Methods = new Methods();

  private constructor(socket: net.Socket, settings: Settings, fragmentSize: number) {
    super(socket, settings, fragmentSize);
  }

  /** Connects to `endpoint`, registers every method of `methods`, and serves them. */
  static async connect(endpoint: string, methods: Methods, options: ConnectOptions = {}): Promise<Provider> {
    const p = await Peer.establish(endpoint, options, (s, settings, frag) => new Provider(s, settings, frag));
    p.methods = methods;
    try {
      await p.register(methods.entries());
    } catch (e) {
      await p.close("registration failed");
      throw e;
    }
    return p;
  }

  /** Announces `entries` to the runtime (resolves once accepted). */
  private register(entries: MethodEntry[]): Promise<void> {
    return this.admin(() => this.conn.register(entries));
  }

  /** Withdraws methods by full name; their handlers stay until the connection ends. */
  unregister(names: string[]): Promise<void> {
    return this.admin(() => this.conn.unregister(names));
  }

  private admin(open: () => number): Promise<void> {
    let id: number;
    try {
      id = open();
    } catch (e) {
      return Promise.reject(e);
    }
    this.scheduleFlush();
    return new Promise((resolve, reject) => this.admins.set(id, { resolve, reject }));
  }

  private readonly admins = new Map<number, { resolve: () => void; reject: (e: PolycallError) => void }>();

  /** Calls being served now. */
  get serving(): number {
    return this.running.size;
  }

  protected override dispatch(e: ConnectionEvent): void {
    switch (e.type) {
      case "call":
        this.serve(e.callId, e.service, e.method, e.payload, e.meta);
        return;
      case "cancelled":
        this.stop(e.callId, new PolycallError("cancelled", "the caller cancelled the call"));
        return;
      case "reply":
      case "failed": {
        const a = this.admins.get(e.callId);
        if (a !== undefined) {
          this.admins.delete(e.callId);
          if (e.type === "reply") a.resolve();
          else a.reject(e.error);
          return;
        }
        break;
      }
      case "closed":
        for (const id of [...this.running.keys()]) this.stop(id, new PolycallError("unavailable", "the connection ended"));
        for (const [, a] of this.admins) a.reject(new PolycallError("unavailable", `connection ended: ${e.error.detail}`));
        this.admins.clear();
        break;
      default:
        break;
    }
    super.dispatch(e);
  }

  private stop(callId: number, reason: PolycallError): void {
    const r = this.running.get(callId);
    if (r === undefined) return;
    this.running.delete(callId);
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.controller.abort(reason);
  }

  private serve(callId: number, service: string, method: string, payload: Payload, meta: WireMeta): void {
    const entry = this.methods.handlers.get(`${service}.${method}`);
    if (entry === undefined) {
      this.respondError(callId, new PolycallError("unknown_method", `this provider serves no method ${service}.${method}`));
      return;
    }
    const controller = new AbortController();
    const running: Running = { controller, timer: undefined };
    let deadline: number | undefined;
    if (meta.timeoutUs !== undefined) {
      const ms = Number(meta.timeoutUs) / 1000;
      deadline = performance.now() + ms;
      running.timer = setTimeout(() => {
        const error = new PolycallError("deadline_exceeded", "the handler did not finish before the call's deadline");
        this.stop(callId, error);
        this.respondError(callId, error);
      }, Math.min(ms, 2 ** 31 - 1));
    }
    this.running.set(callId, running);
    const ctx: CallContext = { service, method, meta, deadline, signal: controller.signal };
    let result: Promise<Payload | Uint8Array>;
    try {
      result = Promise.resolve(entry.handler(payload, ctx));
    } catch (e) {
      result = Promise.reject(e);
    }
    result.then(
      (reply) => {
        if (this.running.get(callId) !== running) return;
        this.stop(callId, new PolycallError("ok", "answered"));
        this.respond(callId, reply instanceof Payload ? reply : Payload.raw(reply));
      },
      (err: unknown) => {
        if (this.running.get(callId) !== running) return;
        this.stop(callId, new PolycallError("ok", "answered"));
        const error =
          err instanceof PolycallError
            ? err
            : new PolycallError("internal", `the handler of ${service}.${method} failed: ${err instanceof Error ? err.message : String(err)}`);
        this.respondError(callId, error);
      },
    );
  }
}
