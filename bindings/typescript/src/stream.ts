/**
 * Streams of messages as async iterators: what a caller reads from a reply stream and a
 * handler from a request stream, and the helpers that pull a producer's messages.
 */

import { Payload } from "./payload.js";
import { PolycallError } from "./status.js";

/** Messages a stream may be fed: payloads, or raw bytes (sent as content type raw). */
export type StreamSource = AsyncIterable<Payload | Uint8Array> | Iterable<Payload | Uint8Array>;

/**
 * Messages received on a stream, in order, as an async iterator: `for await (const m of
 * stream)` ends when the peer ends the stream (END), throws a {@link PolycallError}
 * when it fails (messages received before the failure are handed out first), and
 * leaving the loop early (`break`, `return()`) gives up on the stream — a caller's
 * call is cancelled.
 *
 * Flow control: a message counts against the stream's window until it is taken here, so
 * a reader that stops reading stops the stream's producer after about one window.
 */
export class MessageStream implements AsyncIterableIterator<Payload> {
  private items: { payload: Payload; wireLen: number }[] = [];
  private head = 0;
  private ended = false;
  private error: PolycallError | null = null;
  private errorThrown = false;
  private detached = false;
  private waiter: { resolve: (r: IteratorResult<Payload>) => void; reject: (e: unknown) => void } | null = null;

  /** @internal */
  constructor(
    /** The application took a message of `wireLen` bytes. */
    private readonly taken: (wireLen: number) => void,
    /** The reader gave up before the stream ended. */
    private readonly onReturn: () => void,
  ) {}

  /** Messages received and not yet read. */
  get buffered(): number {
    return this.items.length - this.head;
  }

  /** Whether the stream is over for the reader (ended, failed or given up). */
  get finished(): boolean {
    return this.ended || this.error !== null || this.detached;
  }

  /** @internal A message arrived. */
  push(payload: Payload, wireLen: number): void {
    if (this.finished) {
      this.taken(wireLen);
      return;
    }
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      this.taken(wireLen);
      w.resolve({ value: payload, done: false });
      return;
    }
    this.items.push({ payload, wireLen });
  }

  /** @internal The peer ended the stream. */
  end(): void {
    if (this.finished) return;
    this.ended = true;
    if (this.waiter !== null && this.buffered === 0) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: undefined, done: true });
    }
  }

  /**
   * @internal The stream failed. The buffered messages are read first, unless
   * `immediate` (a local deadline, an abort, the connection's end).
   */
  fail(error: PolycallError, immediate = false): void {
    if (this.finished) return;
    this.error = error;
    if (immediate) this.discard();
    if (this.waiter !== null && this.buffered === 0) {
      const w = this.waiter;
      this.waiter = null;
      this.errorThrown = true;
      w.reject(error);
    }
  }

  private discard(): void {
    const rest = this.items.slice(this.head);
    this.items = [];
    this.head = 0;
    for (const m of rest) this.taken(m.wireLen);
  }

  /** The next message. */
  next(): Promise<IteratorResult<Payload>> {
    if (this.head < this.items.length) {
      const m = this.items[this.head]!;
      this.items[this.head] = undefined as never;
      this.head++;
      if (this.head === this.items.length) {
        this.items = [];
        this.head = 0;
      }
      this.taken(m.wireLen);
      return Promise.resolve({ value: m.payload, done: false });
    }
    if (this.error !== null && !this.errorThrown && !this.detached) {
      this.errorThrown = true;
      return Promise.reject(this.error);
    }
    if (this.finished) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter !== null) return Promise.reject(new PolycallError("failed_precondition", "next() called again before the previous one settled"));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Gives up on the stream: buffered messages are dropped (a caller's call is cancelled). */
  return(): Promise<IteratorResult<Payload>> {
    if (!this.detached) {
      const wasOpen = !this.ended && this.error === null;
      this.detached = true;
      this.discard();
      if (this.waiter !== null) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve({ value: undefined, done: true });
      }
      if (wasOpen) this.onReturn();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Reads the whole stream into an array. */
  async collect(): Promise<Payload[]> {
    const out: Payload[] = [];
    for await (const p of this) out.push(p);
    return out;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** Marks "not settled yet" in {@link settledSoon}. */
export const PENDING: unique symbol = Symbol("pending");

/**
 * `p`'s result if it settles before the event loop's next turn (a producer that has a
 * message ready), else {@link PENDING}. Rejections are thrown.
 */
export function settledSoon<T>(p: Promise<T>): Promise<T | typeof PENDING> {
  return Promise.race([p, new Promise<typeof PENDING>((r) => setImmediate(() => r(PENDING)))]);
}

/** An async iterator over a sync or async iterable. */
export function iteratorOf<T>(source: AsyncIterable<T> | Iterable<T>): AsyncIterator<T> {
  if (source !== null && typeof source === "object" && Symbol.asyncIterator in source) {
    return (source as AsyncIterable<T>)[Symbol.asyncIterator]();
  }
  if (source !== null && typeof source === "object" && Symbol.iterator in source) {
    const it = (source as Iterable<T>)[Symbol.iterator]();
    return {
      next: async () => it.next(),
      return: async (v?: unknown) => it.return?.(v) ?? { value: undefined, done: true },
    };
  }
  throw new PolycallError("invalid_input", "a stream of messages must be an iterable or an async iterable");
}

/** Stops a producer, ignoring what it says about it. */
export function stopIterator(it: AsyncIterator<unknown> | null): void {
  if (it === null || typeof it.return !== "function") return;
  try {
    void Promise.resolve(it.return()).catch(() => undefined);
  } catch {
    // a producer that fails to stop is stopped anyway
  }
}

/** A message of a stream as a payload (raw bytes become content type raw). */
export function toPayload(v: unknown): Payload {
  if (v instanceof Payload) return v;
  if (v instanceof Uint8Array) return Payload.raw(v);
  throw new PolycallError("invalid_input", `a stream message must be a Payload or a Uint8Array, got ${v === null ? "null" : typeof v}`);
}
