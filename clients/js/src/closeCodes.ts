// closeCodes.ts: what the client does after a close code (docs/protocol.md section 6) or,
// where the WebSocket implementation shows it (Node `ws`), a refused upgrade's HTTP status.

import type { AetherErrorCode } from "./errors.js";

export type CloseDecision =
  | {
      action: "reconnect";
      /** Wait at least this long (on top of nothing: the backoff delay is raised to it). */
      minDelayMs?: number;
      /** Reconnect at once, no backoff (4001 with getToken; the first 4011 of a row). */
      immediate?: boolean;
      /** Compute the backoff delay with at least this attempt number (repeated 4011s). */
      minAttempt?: number;
    }
  | { action: "stop"; error: AetherErrorCode };

/**
 * The 4011 storm guard's window: a 4011 that comes less than this long after the previous
 * 4011 is "in a row" with it.
 */
export const SERVICE_RECONNECT_WINDOW_MS = 10_000;

/**
 * Counts the 4011s ("asked to reconnect by the service") that come in a row: each less than
 * `windowMs` after the previous one. The first of a row reconnects at once; the ones after it
 * fall back to the jittered backoff (see decideClose), so a hub that answers every connection
 * with 4011 cannot make the client spin.
 */
export class ServiceReconnects {
  private streak = 0;
  private lastAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly windowMs: number = SERVICE_RECONNECT_WINDOW_MS) {}

  /** Records a 4011 at `now` (ms); returns how many 4011s in a row, this one included (1 = first). */
  note(now: number): number {
    this.streak = now - this.lastAt < this.windowMs ? this.streak + 1 : 1;
    this.lastAt = now;
    return this.streak;
  }
}

/**
 * The close-code table of the README. `canRefreshToken`: a getToken() callback is configured.
 * `inARow`: for 4011, how many 4011s in a row this one is (ServiceReconnects.note), 1 by default.
 */
export function decideClose(code: number, canRefreshToken: boolean, inARow = 1): CloseDecision {
  switch (code) {
    case 1009: // this client sent a frame over the hub's limit
    case 4000: // invalid frame
    case 4003: // policy
      return { action: "stop", error: "hub_closed" };
    case 4001: // token expired or revoked
      return canRefreshToken ? { action: "reconnect", immediate: true } : { action: "stop", error: "token" };
    case 4010: // disconnected by the service (POST /v3/disconnect, reconnect false): final
      return { action: "stop", error: "disconnected_by_service" };
    case 4011: // asked to reconnect by the service (reconnect true): at once, unless it repeats
      return inARow <= 1 ? { action: "reconnect", immediate: true } : { action: "reconnect", minAttempt: inARow - 1 };
    case 4029: // sent too fast
      return { action: "reconnect", minDelayMs: 1000 };
    default: // 1000, 1001, 1006, 4008, 4408 and anything else
      return { action: "reconnect" };
  }
}

/** A refused upgrade's HTTP status, as Node's `ws` reports it ("Unexpected server response: 401"). */
export function decideHttpStatus(status: number, canRefreshToken: boolean): CloseDecision {
  if (status === 401) return canRefreshToken ? { action: "reconnect" } : { action: "stop", error: "refused" };
  if (status === 400 || status === 403) return { action: "stop", error: "refused" };
  return { action: "reconnect" }; // 429, 503, 5xx: backoff, next URL
}

/** Extracts the status from a `ws` handshake error message, if it is one. */
export function httpStatusFromError(ev: unknown): number | undefined {
  const e = ev as { message?: unknown; error?: { message?: unknown } } | null;
  const text = typeof e?.message === "string" ? e.message : typeof e?.error?.message === "string" ? e.error.message : "";
  const m = /Unexpected server response: (\d{3})/.exec(text);
  return m ? Number(m[1]) : undefined;
}
