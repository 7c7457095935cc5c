// closeCodes.ts: what the client does after a close code (docs/protocol.md section 6) or,
// where the WebSocket implementation shows it (Node `ws`), a refused upgrade's HTTP status.

import type { AetherErrorCode } from "./errors.js";

export type CloseDecision =
  | {
      action: "reconnect";
      /** Wait at least this long (on top of nothing: the backoff delay is raised to it). */
      minDelayMs?: number;
      /** Reconnect at once, no backoff (4001 with getToken). */
      immediate?: boolean;
    }
  | { action: "stop"; error: AetherErrorCode };

/** The close-code table of the README. `canRefreshToken`: a getToken() callback is configured. */
export function decideClose(code: number, canRefreshToken: boolean): CloseDecision {
  switch (code) {
    case 1009: // this client sent a frame over the hub's limit
    case 4000: // invalid frame
    case 4003: // policy
      return { action: "stop", error: "hub_closed" };
    case 4001: // token expired
      return canRefreshToken ? { action: "reconnect", immediate: true } : { action: "stop", error: "token" };
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
