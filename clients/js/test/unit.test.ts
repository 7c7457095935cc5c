// Unit tests of the pure parts: backoff, frame building/validation, close-code decisions,
// recovery positions and dedup, the emitter.
import { describe, expect, test } from "vitest";
import { backoffDelay } from "../src/backoff.js";
import { decideClose, decideHttpStatus, httpStatusFromError } from "../src/closeCodes.js";
import { buildFrame, isVisionId } from "../src/frames.js";
import { Positions } from "../src/recovery.js";
import { AetherClient, AetherError, type Message } from "../src/index.js";

describe("backoffDelay (full jitter)", () => {
  const o = { minDelayMs: 500, maxDelayMs: 20000 };
  test("is random(0, min(max, min * 2^attempt))", () => {
    expect(backoffDelay(0, o, () => 0)).toBe(0);
    expect(backoffDelay(0, o, () => 0.999999)).toBe(499);
    expect(backoffDelay(3, o, () => 0.5)).toBe(2000);
    expect(backoffDelay(10, o, () => 0.999999)).toBe(19999);
    expect(backoffDelay(1000, o, () => 0.5)).toBe(10000);
  });
  test("stays within bounds for random input", () => {
    for (let a = 0; a < 40; a++) {
      const d = backoffDelay(a, o);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThanOrEqual(Math.min(20000, 500 * 2 ** a));
    }
  });
});

describe("frames", () => {
  const ctx = { client: "me", group: "g1", maxMessageBytes: 200 };
  test("Vision IDs", () => {
    expect(isVisionId("a")).toBe(true);
    expect(isVisionId("A_z-9".repeat(12))).toBe(true);
    expect(isVisionId("x".repeat(65))).toBe(false);
    expect(isVisionId("")).toBe(false);
    expect(isVisionId("a b")).toBe(false);
    expect(isVisionId("a/b")).toBe(false);
    expect(isVisionId(3)).toBe(false);
  });
  test("builds V3 frames", () => {
    expect(JSON.parse(buildFrame(ctx, "group", null, { cmd: "go", payload: { n: 1 } }))).toEqual({
      version: "3", msg_type: "cmd", target: "group", from_id: "me", to_id: null, group_id: "g1",
      cmd: "go", msg: null, payload: { n: 1 },
    });
    expect(JSON.parse(buildFrame(ctx, "direct", "w1", { msg: "hi", sentAt: "2026-01-02T03:04:05Z" }))).toEqual({
      version: "3", msg_type: "msg", target: "direct", from_id: "me", to_id: "w1", group_id: null,
      cmd: null, msg: "hi", payload: {}, sent_at: "2026-01-02T03:04:05Z",
    });
  });
  test.each([
    ["direct to a bad id", "direct", "a b", {}],
    ["payload null", "group", null, { payload: null }],
    ["payload array", "group", null, { payload: [1] }],
    ["msg not a string", "group", null, { msg: 3 }],
    ["unknown field", "group", null, { to: "x" }],
    ["bad sentAt", "group", null, { sentAt: "yesterday" }],
    ["body not an object", "echo", null, "hi"],
    ["circular payload", "echo", null, (() => { const p: Record<string, unknown> = {}; p.p = p; return { payload: p }; })()],
    ["lone surrogate in payload", "group", null, { payload: { t: "\ud83d" } }],
    ["lone low surrogate in a key", "group", null, { payload: { ["a\ude00"]: 1 } }],
    ["lone surrogate in msg", "group", null, { msg: "x\ud83d" }],
    ["nesting past the hub's limit", "group", null, { payload: { v: JSON.parse("[".repeat(130) + "]".repeat(130)) as unknown } }],
  ])("rejects %s", (_name, target, to, body) => {
    expect(() => buildFrame(ctx, target as "group", to, body as never)).toThrow(
      expect.objectContaining({ code: "invalid_message" }) as Error,
    );
  });
  test("rejects a frame over the size limit, counting UTF-8 bytes", () => {
    expect(() => buildFrame(ctx, "echo", null, { msg: "é".repeat(80) })).toThrow(
      expect.objectContaining({ code: "too_large" }) as Error,
    );
    expect(() => buildFrame(ctx, "echo", null, { msg: "e".repeat(60) })).not.toThrow();
    // A whole pair, a deep-but-allowed payload and Infinity (written as null) pass.
    const deep = JSON.parse("[".repeat(100) + "]".repeat(100)) as unknown;
    for (const payload of [{ t: "\ud83d\ude00" }, { v: deep }, { n: Infinity }]) {
      expect(() => buildFrame({ ...ctx, maxMessageBytes: 65536 }, "group", null, { payload })).not.toThrow();
    }
  });
});

describe("close codes", () => {
  test("the table", () => {
    for (const c of [1000, 1001, 1006, 4008, 4408, 1011, 3000]) expect(decideClose(c, false)).toEqual({ action: "reconnect" });
    expect(decideClose(4029, false)).toEqual({ action: "reconnect", minDelayMs: 1000 });
    for (const c of [1009, 4000, 4003]) expect(decideClose(c, true)).toEqual({ action: "stop", error: "hub_closed" });
    expect(decideClose(4001, true)).toEqual({ action: "reconnect", immediate: true });
    expect(decideClose(4001, false)).toEqual({ action: "stop", error: "token" });
  });
  test("refused upgrades seen by ws", () => {
    expect(decideHttpStatus(401, true)).toEqual({ action: "reconnect" });
    expect(decideHttpStatus(401, false)).toEqual({ action: "stop", error: "refused" });
    expect(decideHttpStatus(400, true)).toEqual({ action: "stop", error: "refused" });
    expect(decideHttpStatus(403, true)).toEqual({ action: "stop", error: "refused" });
    expect(decideHttpStatus(429, false)).toEqual({ action: "reconnect" });
    expect(decideHttpStatus(503, false)).toEqual({ action: "reconnect" });
    expect(httpStatusFromError({ message: "Unexpected server response: 401" })).toBe(401);
    expect(httpStatusFromError({ error: new Error("Unexpected server response: 503") })).toBe(503);
    expect(httpStatusFromError({ message: "ECONNREFUSED" })).toBeUndefined();
  });
});

describe("recovery positions", () => {
  const m = (target: string, epoch: string, offset: number) => ({ target, epoch, offset, msg_type: "msg" }) as unknown as Message;
  test("since params: new first, then EPOCH:OFFSET", () => {
    const p = new Positions();
    expect(p.sinceParams()).toEqual([["since_client", "new"], ["since_group", "new"], ["since_broadcast", "new"]]);
    p.applySummary({ group: { recovered: true, missed: 0, epoch: "e1", offset: 4 } });
    expect(p.sinceParams()[1]).toEqual(["since_group", "e1:4"]);
  });
  test("drops duplicates by offset, per route, and follows a new epoch", () => {
    const p = new Positions();
    expect(p.accept(m("group", "e1", 1))).toBe(true);
    expect(p.accept(m("group", "e1", 3))).toBe(true);
    expect(p.accept(m("group", "e1", 3))).toBe(false);
    expect(p.accept(m("group", "e1", 2))).toBe(false);
    expect(p.accept(m("direct", "e9", 1))).toBe(true);
    expect(p.accept(m("group", "e2", 1))).toBe(true);
    expect(p.accept(m("echo", "e2", 1))).toBe(true);
    expect(p.get()).toEqual({ client: { epoch: "e9", offset: 1 }, group: { epoch: "e2", offset: 1 } });
  });
});

describe("client options and emitter", () => {
  test("invalid options throw invalid_options", () => {
    const bad = [
      { url: "ws://x", group: "g 1", client: "c" },
      { url: "ws://x", group: "g", client: "" },
      { url: "ftp://x", group: "g", client: "c" },
      { url: [], group: "g", client: "c" },
      { url: "ws://x", group: "g", client: "c", queueSize: -1 },
    ];
    for (const o of bad) expect(() => new AetherClient(o as never)).toThrow(AetherError);
  });
  test("on() returns a remover; off() removes", () => {
    const c = new AetherClient({ url: "ws://127.0.0.1:1", group: "g", client: "c" });
    const seen: string[] = [];
    const off = c.on("state", (e) => seen.push(e.to));
    expect(c.listenerCount("state")).toBe(1);
    off();
    expect(c.listenerCount()).toBe(0);
  });
});
