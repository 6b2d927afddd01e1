/** A client: calls methods of a polycall runtime (or any polycall server). */

import type * as net from "node:net";

import type { Settings } from "./handshake.js";
import { type ConnectOptions, Peer } from "./peer.js";

/**
 * A connection that calls methods.
 *
 * ```ts
 * const client = await Client.connect("127.0.0.1:7464");
 * const sum = await client.callJson<{ sum: number }>("calc", "add", { a: 2, b: 40 }, { deadlineMs: 500 });
 * await client.close();
 * ```
 */
export class Client extends Peer {
  private constructor(socket: net.Socket, settings: Settings, fragmentSize: number) {
    super(socket, settings, fragmentSize);
  }

  /** Connects to `endpoint` (`HOST:PORT`, `[V6]:PORT`, `unix:/path`) and completes the handshake. */
  static connect(endpoint: string, options: ConnectOptions = {}): Promise<Client> {
    return Peer.establish(endpoint, options, (s, settings, frag) => new Client(s, settings, frag));
  }
}
