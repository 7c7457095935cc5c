// frames.ts: V3 frames: Vision IDs, building a client frame from a send helper's body (with its ack_id),
// validating it (so the hub never has to close the socket) and reading deliveries.

import { AetherError } from "./errors.js";

export type Target = "direct" | "group" | "broadcast" | "echo";
export type MsgType = "msg" | "cmd" | "heartbeat" | "presence" | "recovery" | "ack";

/** What a send helper takes. `msg_type` is `cmd` when `cmd` is set, else `msg`. */
export interface Body {
  msg?: string | null;
  cmd?: string | null;
  payload?: Record<string, unknown>;
  /** RFC 3339 date-time; the hub fills in its own time when absent. */
  sentAt?: string;
}

/** A message as the hub delivers it (docs/protocol.md section 2, plus section 9's offset/epoch). */
export interface Message {
  version: "3";
  msg_type: MsgType;
  target: Target;
  from_id: string;
  to_id: string | null;
  group_id: string | null;
  cmd: string | null;
  msg: string | null;
  payload: Record<string, unknown>;
  sent_at: string;
  offset?: number;
  epoch?: string;
}

const VISION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const BODY_KEYS = new Set(["msg", "cmd", "payload", "sentAt"]);

/** A Vision ID (`id_random`): 1 to 64 characters of `[A-Za-z0-9_-]`. */
export function isVisionId(value: unknown): value is string {
  return typeof value === "string" && VISION_ID.test(value);
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

let encoder: TextEncoder | undefined;
/** Length of a string in UTF-8 bytes. */
export function utf8Length(text: string): number {
  return (encoder ??= new TextEncoder()).encode(text).length;
}

function invalid(message: string): AetherError {
  return new AetherError("invalid_message", message);
}

export interface FrameContext {
  client: string;
  group: string;
  maxMessageBytes: number;
}

/**
 * Builds the JSON text of a `msg`/`cmd` frame (asking for an ack when `ackId` is given) and
 * validates it. Throws AetherError (`invalid_message` or `too_large`) instead of producing a
 * frame the hub would close on.
 */
export function buildFrame(ctx: FrameContext, target: Target, to: string | null, body: Body | undefined, ackId?: string): string {
  const b: Body = body ?? {};
  if (!isPlainObject(b)) throw invalid("the message body must be an object");
  for (const key of Object.keys(b)) {
    if (!BODY_KEYS.has(key)) throw invalid(`unknown field "${key}" (allowed: msg, cmd, payload, sentAt)`);
  }
  if (target === "direct" && !isVisionId(to)) {
    throw invalid(`to must be a Vision ID (1-64 characters of A-Z a-z 0-9 _ -), got ${JSON.stringify(to)}`);
  }
  for (const key of ["msg", "cmd"] as const) {
    const v = b[key];
    if (v !== undefined && v !== null && typeof v !== "string") throw invalid(`${key} must be a string`);
  }
  const payload = b.payload === undefined ? {} : b.payload;
  if (!isPlainObject(payload)) throw invalid("payload must be a JSON object");
  if (b.sentAt !== undefined && (typeof b.sentAt !== "string" || !RFC3339.test(b.sentAt))) {
    throw invalid("sentAt must be an RFC 3339 date-time");
  }
  const frame: Record<string, unknown> = {
    version: "3",
    msg_type: typeof b.cmd === "string" ? "cmd" : "msg",
    target,
    from_id: ctx.client,
    to_id: target === "direct" ? to : null,
    group_id: target === "group" ? ctx.group : null,
    cmd: b.cmd ?? null,
    msg: b.msg ?? null,
    payload,
  };
  if (b.sentAt !== undefined) frame.sent_at = b.sentAt;
  if (ackId !== undefined) frame.ack_id = ackId;
  checkStrict(payload);
  for (const key of ["cmd", "msg"] as const) {
    const v = b[key];
    if (typeof v === "string" && LONE_SURROGATE.test(v)) throw invalid(`${key} ${LONE_SURROGATE_REASON}`);
  }
  let text: string;
  try {
    text = JSON.stringify(frame);
  } catch (err) {
    throw invalid(`payload cannot be serialised to JSON: ${(err as Error).message}`);
  }
  const size = utf8Length(text);
  if (size > ctx.maxMessageBytes) {
    throw new AetherError("too_large", `the frame is ${size} bytes, over the limit of ${ctx.maxMessageBytes}`);
  }
  return text;
}

/** A UTF-16 surrogate without its pair (e.g. an emoji cut in half). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/;
const LONE_SURROGATE_REASON = "holds a lone UTF-16 surrogate (half of a character), which the hub refuses";
/** Nesting the hub reads in a payload (its JSON reader stops at 128 levels, the frame's own included). */
const MAX_DEPTH = 120;

/**
 * What JSON.stringify writes but the hub refuses with 4000 (docs/protocol.md
 * section 2, read strictly): a lone surrogate in a string or key, nesting
 * past the hub's limit. Numbers need no check: JSON.stringify writes a
 * non-finite one as null. Iterative, so a cycle ends at the depth limit.
 */
function checkStrict(payload: unknown): void {
  const stack: Array<[unknown, number]> = [[payload, 1]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [value, depth] = next;
    if (typeof value === "string") {
      if (LONE_SURROGATE.test(value)) throw invalid(`a payload string ${LONE_SURROGATE_REASON}`);
      continue;
    }
    if (value === null || typeof value !== "object") continue;
    if (depth > MAX_DEPTH) throw invalid(`payload nests deeper than ${MAX_DEPTH} levels`);
    for (const [key, child] of Object.entries(value)) {
      if (LONE_SURROGATE.test(key)) throw invalid(`a payload key ${LONE_SURROGATE_REASON}`);
      stack.push([child, depth + 1]);
    }
  }
}

/** A frame the client sends for itself: a heartbeat or a presence query. */
export function controlFrame(msgType: "heartbeat" | "presence", client: string): string {
  return JSON.stringify({ version: "3", msg_type: msgType, target: "echo", from_id: client, payload: {} });
}

/** Parses a delivery; returns undefined for anything that is not a V3 message object. */
export function parseDelivery(data: unknown): Message | undefined {
  if (typeof data !== "string") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return undefined;
  }
  if (!isPlainObject(value) || typeof value.msg_type !== "string" || typeof value.target !== "string") return undefined;
  if (!isPlainObject(value.payload)) value.payload = {};
  return value as unknown as Message;
}
