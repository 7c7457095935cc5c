// errors.ts: AetherError, the one error type the client throws, rejects with and emits.

/** What went wrong, as a stable string an application can switch on. */
export type AetherErrorCode =
  | "invalid_options"
  | "invalid_message"
  | "too_large"
  | "queue_full"
  | "not_connected"
  | "closed"
  | "timeout"
  | "token"
  | "refused"
  | "hub_closed"
  | "disconnected_by_service"
  | "failed";

export class AetherError extends Error {
  readonly code: AetherErrorCode;
  /** The WebSocket close code (or, for `refused`, the HTTP status) behind this error, when there is one. */
  readonly closeCode?: number;
  /**
   * For `failed`: the hub's reason (`unavailable`: Redis could not take the message). For
   * `disconnected_by_service`: the close reason the service gave (`POST /v3/disconnect`; the hub
   * sends a default wording when it gave none).
   */
  readonly reason?: string;

  constructor(code: AetherErrorCode, message: string, closeCode?: number, reason?: string) {
    super(message);
    this.name = "AetherError";
    this.code = code;
    if (closeCode !== undefined) this.closeCode = closeCode;
    if (reason !== undefined) this.reason = reason;
  }
}
