// acks.ts: acknowledgements (docs/protocol.md section 10): the ack ids a client puts on its
// sends, and the table of sends waiting for their ack. Each settles exactly once: from the
// hub's `ack` frame, when the connection is lost, or when no ack came within the timeout.

import { AetherError } from "./errors.js";

/**
 * What a send resolves with. `ok`: the hub published it (`offset`/`epoch` when it was kept in
 * history). `unconfirmed`: the frame was written but its fate is unknown (the hub said so, or
 * the connection was lost or no ack came in time): it may or may not have been published, and
 * the client never sends it again by itself. `sent`: written to the socket, no ack asked
 * (option `acks: false`). A `failed` ack rejects with AetherError `failed` instead.
 */
export interface Ack {
  status: "ok" | "unconfirmed" | "sent";
  /** The frame's `ack_id` (absent for `sent`). */
  ackId?: string;
  offset?: number;
  epoch?: string;
  /** Why it is unconfirmed: the hub's reason, or `disconnected`, `closed`, `timeout`. */
  reason?: string;
}

interface Pending {
  resolve: (ack: Ack) => void;
  reject: (error: AetherError) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class Acks {
  private readonly pending = new Map<string, Pending>();
  /** Random per instance: a reloaded page must not reuse its predecessor's ids. */
  private readonly prefix = (Math.random().toString(36).slice(2) + "0000000").slice(0, 7);
  private n = 0;

  constructor(private readonly timeoutMs: number) {}

  /** Sends waiting for their ack. */
  get size(): number {
    return this.pending.size;
  }

  /** A new ack id: the instance's prefix and a counter, e.g. `k3x9qaz-1f`. */
  nextId(): string {
    return `${this.prefix}-${(++this.n).toString(36)}`;
  }

  /** Waits for the ack of a frame just written with this id, at most timeoutMs. */
  wait(ackId: string, resolve: Pending["resolve"], reject: Pending["reject"]): void {
    const timer = setTimeout(() => this.end(ackId, { status: "unconfirmed", ackId, reason: "timeout" }), this.timeoutMs);
    this.pending.set(ackId, { resolve, reject, timer });
  }

  /** Settles the send an `ack` frame's payload names; false when none waits for it. */
  settle(payload: Record<string, unknown>): boolean {
    const { ack_id, status, offset, epoch, reason } = payload;
    const ackId = String(ack_id);
    // `unconfirmed`, or a status this client does not know: either way the fate is unknown.
    const ack: Ack = { status: status === "ok" ? "ok" : "unconfirmed", ackId };
    if (typeof offset === "number") ack.offset = offset;
    if (typeof epoch === "string") ack.epoch = epoch;
    if (typeof reason === "string") ack.reason = reason;
    return this.end(ackId, status === "failed" ? new AetherError("failed", `not published, reached nobody (${ack.reason})`, undefined, ack.reason) : ack);
  }

  /** Settles every waiting send `unconfirmed`: written, but its ack can no longer come. */
  dropAll(reason: string): void {
    for (const ackId of [...this.pending.keys()]) this.end(ackId, { status: "unconfirmed", ackId, reason });
  }

  private end(ackId: string, result: Ack | AetherError): boolean {
    const p = this.pending.get(ackId);
    if (!p) return false;
    this.pending.delete(ackId);
    clearTimeout(p.timer);
    if (result instanceof AetherError) p.reject(result);
    else p.resolve(result);
    return true;
  }
}
