// Unit tests of the pure parts: backoff, frame building/validation, close-code decisions,
// recovery positions and dedup, the emitter, the pending-ack table, and the client's acks
// and its handling of 4010/4011 (with the 4011 storm guard) against a scripted fake socket.
import { afterEach, describe, expect, test, vi } from "vitest";
import { Acks } from "../src/acks.js";
import { backoffDelay } from "../src/backoff.js";
import { decideClose, decideHttpStatus, httpStatusFromError, SERVICE_RECONNECT_WINDOW_MS, ServiceReconnects } from "../src/closeCodes.js";
import { buildFrame, isVisionId } from "../src/frames.js";
import { Positions } from "../src/recovery.js";
import { type Ack, AetherClient, AetherError, type Message, type StateEvent, type WebSocketLike } from "../src/index.js";

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
    expect(JSON.parse(buildFrame(ctx, "echo", null, {}, "ab-1"))).toMatchObject({ target: "echo", ack_id: "ab-1" });
    expect(JSON.parse(buildFrame(ctx, "echo", null, {}))).not.toHaveProperty("ack_id");
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
  test("4010 (disconnected by the service) stops for good, with or without getToken", () => {
    for (const refresh of [true, false]) {
      expect(decideClose(4010, refresh)).toEqual({ action: "stop", error: "disconnected_by_service" });
      expect(decideClose(4010, refresh, 5)).toEqual({ action: "stop", error: "disconnected_by_service" });
    }
  });
  test("4011 (asked to reconnect): at once the first time, then the jittered backoff, growing with the row", () => {
    for (const refresh of [true, false]) {
      expect(decideClose(4011, refresh)).toEqual({ action: "reconnect", immediate: true });
      expect(decideClose(4011, refresh, 1)).toEqual({ action: "reconnect", immediate: true });
      expect(decideClose(4011, refresh, 2)).toEqual({ action: "reconnect", minAttempt: 1 });
      expect(decideClose(4011, refresh, 6)).toEqual({ action: "reconnect", minAttempt: 5 });
    }
    // The row count only matters for 4011.
    expect(decideClose(4001, true, 3)).toEqual({ action: "reconnect", immediate: true });
    expect(decideClose(1006, false, 3)).toEqual({ action: "reconnect" });
  });
  test("the 4011 storm guard counts 4011s less than the window apart", () => {
    expect(SERVICE_RECONNECT_WINDOW_MS).toBe(10_000);
    const g = new ServiceReconnects();
    expect(g.note(1_000_000)).toBe(1);
    expect(g.note(1_000_050)).toBe(2);
    expect(g.note(1_009_000)).toBe(3); // 8950 ms after the previous one
    expect(g.note(1_019_000)).toBe(1); // exactly the window later: a new row
    expect(g.note(1_019_001)).toBe(2);
    const short = new ServiceReconnects(100);
    expect(short.note(0)).toBe(1);
    expect(short.note(99)).toBe(2);
    expect(short.note(250)).toBe(1);
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

/** The settled value of each promise so far (after pending microtasks): an Ack, an error, or "pending". */
async function states(ps: Promise<Ack>[]): Promise<Array<Ack | AetherError | "pending">> {
  const out: Array<Ack | AetherError | "pending"> = ps.map(() => "pending");
  ps.forEach((p, i) => {
    p.then(
      (a) => void (out[i] = a),
      (e: AetherError) => void (out[i] = e),
    );
  });
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return out;
}

describe("acks: the pending-ack table", () => {
  afterEach(() => void vi.useRealTimers());
  const waitFor = (t: Acks, id: string) => new Promise<Ack>((resolve, reject) => t.wait(id, resolve, reject));

  test("ack ids: within the charset, unique per table, a random prefix per table", () => {
    const t = new Acks(1000);
    const ids = Array.from({ length: 2000 }, () => t.nextId());
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(new Set(ids).size).toBe(ids.length);
    const prefix = (id: string) => id.slice(0, id.indexOf("-"));
    expect(prefix(ids[0]!)).toHaveLength(7);
    expect(new Set(ids.map(prefix)).size).toBe(1);
    expect(prefix(new Acks(1000).nextId())).not.toBe(prefix(ids[0]!));
  });

  test("each send settles exactly once: ok with offset/epoch, failed rejects, unconfirmed resolves", async () => {
    const t = new Acks(60_000);
    const [a, b, c, d] = ["a", "b", "c", "d"].map((id) => waitFor(t, id));
    expect(t.size).toBe(4);
    expect(t.settle({ ack_id: "a", status: "ok", offset: 42, epoch: "e1" })).toBe(true);
    expect(t.settle({ ack_id: "a", status: "failed", reason: "unavailable" })).toBe(false); // already settled
    expect(t.settle({ ack_id: "b", status: "failed", reason: "unavailable" })).toBe(true);
    expect(t.settle({ ack_id: "c", status: "unconfirmed", reason: "timeout" })).toBe(true);
    expect(t.settle({ ack_id: "d", status: "ok" })).toBe(true);
    expect(t.settle({ ack_id: "zz", status: "ok" })).toBe(false);
    expect(t.settle({ status: "ok" })).toBe(false);
    expect(t.size).toBe(0);
    expect(await a).toEqual({ status: "ok", ackId: "a", offset: 42, epoch: "e1" });
    const err = await b!.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(AetherError);
    expect(err).toMatchObject({ code: "failed", reason: "unavailable" });
    expect(await c).toEqual({ status: "unconfirmed", ackId: "c", reason: "timeout" });
    expect(await d).toEqual({ status: "ok", ackId: "d" }); // not kept in history: no offset
  });

  test("dropAll (a lost connection) settles every waiting send unconfirmed; a late ack is ignored", async () => {
    const t = new Acks(60_000);
    const ps = ["x", "y"].map((id) => waitFor(t, id));
    t.dropAll("disconnected");
    expect(t.size).toBe(0);
    expect(t.settle({ ack_id: "x", status: "ok", offset: 1, epoch: "e" })).toBe(false);
    expect(await Promise.all(ps)).toEqual([
      { status: "unconfirmed", ackId: "x", reason: "disconnected" },
      { status: "unconfirmed", ackId: "y", reason: "disconnected" },
    ]);
  });

  test("no ack within the timeout: unconfirmed (timeout), and no timer is left behind", async () => {
    vi.useFakeTimers();
    const t = new Acks(1000);
    const first = waitFor(t, "p1");
    vi.advanceTimersByTime(500);
    const second = waitFor(t, "p2");
    vi.advanceTimersByTime(501);
    expect(await states([first, second])).toEqual([{ status: "unconfirmed", ackId: "p1", reason: "timeout" }, "pending"]);
    expect(t.size).toBe(1);
    vi.advanceTimersByTime(500);
    expect(await states([second])).toEqual([{ status: "unconfirmed", ackId: "p2", reason: "timeout" }]);
    expect(t.size).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
    expect(t.settle({ ack_id: "p2", status: "ok" })).toBe(false);
    // An ack, and a lost connection, clear their send's timer too.
    const acked = waitFor(t, "p3");
    void waitFor(t, "p4");
    expect(vi.getTimerCount()).toBe(2);
    t.settle({ ack_id: "p3", status: "ok" });
    t.dropAll("disconnected");
    expect(vi.getTimerCount()).toBe(0);
    expect(await acked).toEqual({ status: "ok", ackId: "p3" });
  });
});

/** A scripted socket: opens on the next tick, records what is sent, answers when told. */
class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: Array<Record<string, unknown>> = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor() {
    FakeSocket.all.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }
  close(): void {
    this.readyState = 3;
  }
  /** The frames the application sent (not the client's own presence queries and heartbeats). */
  sends(): Array<Record<string, unknown>> {
    return this.sent.filter((f) => f.msg_type === "msg" || f.msg_type === "cmd");
  }
  ack(payload: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify({ version: "3", msg_type: "ack", target: "echo", from_id: "c", to_id: null, group_id: "g", cmd: null, msg: null, payload, sent_at: "2026-01-01T00:00:00Z" }) });
  }
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

describe("the client's acks (fake socket)", () => {
  afterEach(() => {
    FakeSocket.all = [];
  });
  const make = (extra: Record<string, unknown> = {}) =>
    new AetherClient({ url: "ws://fake", group: "g", client: "c", WebSocket: FakeSocket, environment: {}, reconnect: { minDelayMs: 1, maxDelayMs: 1 }, ...extra });

  test("a send carries an ack_id and resolves with its ack; the ack frame is not a message", async () => {
    const c = make();
    const seen: Message[] = [];
    c.on("message", (m) => seen.push(m));
    await c.connect();
    const ws = FakeSocket.all[0]!;
    const p = c.sendGroup({ msg: "hi" });
    const q = c.echo({ msg: "me" });
    const [f1, f2] = ws.sends();
    expect(f1!.ack_id).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(f2!.ack_id).not.toBe(f1!.ack_id);
    expect(await states([p, q])).toEqual(["pending", "pending"]);
    ws.ack({ ack_id: f2!.ack_id, status: "ok" });
    ws.ack({ ack_id: f1!.ack_id, status: "ok", offset: 7, epoch: "e" });
    expect(await p).toEqual({ status: "ok", ackId: f1!.ack_id, offset: 7, epoch: "e" });
    expect(await q).toEqual({ status: "ok", ackId: f2!.ack_id });
    const r = c.sendDirect("w", { cmd: "go" });
    ws.ack({ ack_id: ws.sends()[2]!.ack_id, status: "failed", reason: "unavailable" });
    await expect(r).rejects.toMatchObject({ code: "failed", reason: "unavailable" });
    expect(seen).toEqual([]);
    c.close();
  });

  test("written sends settle unconfirmed when the socket drops or close() is called; queued ones are acked after the flush", async () => {
    const c = make();
    await c.connect();
    const first = FakeSocket.all[0]!;
    const lost = c.sendGroup({ msg: "lost" });
    first.drop();
    expect(await lost).toMatchObject({ status: "unconfirmed", reason: "disconnected" });
    expect(c.state).toBe("reconnecting");
    const queued = c.sendGroup({ msg: "queued" }); // not written yet: no ack to wait for
    await vi.waitFor(() => expect(c.state).toBe("open"), { timeout: 2000 });
    const second = FakeSocket.all[1]!;
    const [f] = second.sends();
    expect(f).toMatchObject({ msg: "queued" });
    expect(await states([queued])).toEqual(["pending"]);
    second.ack({ ack_id: f!.ack_id, status: "ok", offset: 3, epoch: "e" });
    expect(await queued).toMatchObject({ status: "ok", offset: 3 });
    const atClose = c.broadcast({ msg: "last" });
    c.close();
    expect(await atClose).toMatchObject({ status: "unconfirmed", reason: "closed" });
    await expect(c.sendGroup({})).rejects.toMatchObject({ code: "closed" });
  });

  test("ackTimeoutMs: no ack in time settles unconfirmed (timeout) and the socket stays open", async () => {
    const c = make({ ackTimeoutMs: 50 });
    await c.connect();
    const ack = await c.sendGroup({ msg: "x" });
    expect(ack).toMatchObject({ status: "unconfirmed", reason: "timeout" });
    expect(c.state).toBe("open");
    c.close();
  });

  test("acks: false: no ack_id, resolved { status: \"sent\" } once written", async () => {
    const c = make({ acks: false });
    await c.connect();
    expect(await c.sendGroup({ msg: "x" })).toEqual({ status: "sent" });
    expect(FakeSocket.all[0]!.sends()[0]).not.toHaveProperty("ack_id");
    c.close();
  });

  test("invalid ack options throw", () => {
    expect(() => make({ ackTimeoutMs: 0 })).toThrow(AetherError);
  });
});

describe("4010 and 4011 from the service (fake socket)", () => {
  afterEach(() => {
    FakeSocket.all = [];
    vi.restoreAllMocks();
  });
  const make = (extra: Record<string, unknown> = {}) =>
    new AetherClient({ url: "ws://fake", group: "g", client: "c", WebSocket: FakeSocket, environment: {}, reconnect: { minDelayMs: 100, maxDelayMs: 10_000 }, ...extra });

  test("4010 stops for good: state closed with the code and reason, error disconnected_by_service, pending work settles", async () => {
    let tokens = 0;
    const c = make({ getToken: () => `t${++tokens}` });
    const states: StateEvent[] = [];
    const errors: AetherError[] = [];
    c.on("state", (e) => states.push(e));
    c.on("error", (e) => errors.push(e));
    await c.connect();
    const ws = FakeSocket.all[0]!;
    const written = c.sendGroup({ msg: "in flight" });
    ws.drop(4010, "account suspended");
    expect(c.state).toBe("closed");
    expect(states.at(-1)).toEqual({ from: "open", to: "closed", code: 4010, reason: "account suspended" });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(AetherError);
    expect(errors[0]).toMatchObject({ code: "disconnected_by_service", closeCode: 4010, reason: "account suspended" });
    expect(errors[0]!.message).toMatch(/account suspended/);
    // Written before the close: its ack cannot come (as on any close); new work is refused.
    expect(await written).toMatchObject({ status: "unconfirmed", reason: "disconnected" });
    await expect(c.sendGroup({ msg: "after" })).rejects.toMatchObject({ code: "closed" });
    await expect(c.connect()).rejects.toMatchObject({ code: "closed" });
    await expect(c.presence()).rejects.toMatchObject({ code: "closed" });
    await new Promise((r) => setTimeout(r, 300)); // well past any backoff
    expect(FakeSocket.all).toHaveLength(1);
    expect(tokens).toBe(1);
    expect(states.map((s) => s.to)).toEqual(["connecting", "open", "closed"]);
  });

  test("4010 with an empty reason: reason \"\"; a send queued before the open is flushed, then settles at the 4010", async () => {
    const c = make();
    const errors: AetherError[] = [];
    c.on("error", (e) => errors.push(e));
    const opened = c.connect();
    const queued = c.sendGroup({ msg: "queued" }); // not open yet: waits in the queue
    await opened;
    expect(FakeSocket.all[0]!.sends()).toMatchObject([{ msg: "queued" }]);
    FakeSocket.all[0]!.drop(4010, "");
    expect(await queued).toMatchObject({ status: "unconfirmed", reason: "disconnected" });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: "disconnected_by_service", closeCode: 4010, reason: "" });
    c.close(); // a no-op now
    expect(errors).toHaveLength(1);
    expect(c.state).toBe("closed");
  });

  test("4011 reconnects at once with a fresh token; the state event carries the code and reason", async () => {
    let tokens = 0;
    const c = make({ getToken: () => `t${++tokens}` });
    const states: StateEvent[] = [];
    const errors: AetherError[] = [];
    c.on("state", (e) => states.push(e));
    c.on("error", (e) => errors.push(e));
    await c.connect();
    expect(tokens).toBe(1);
    FakeSocket.all[0]!.drop(4011, "moved to line 4");
    expect(states.at(-1)).toMatchObject({ from: "open", to: "reconnecting", code: 4011, reason: "moved to line 4", delayMs: 0 });
    await vi.waitFor(() => expect(c.state).toBe("open"), { timeout: 2000 });
    expect(tokens).toBe(2);
    expect(FakeSocket.all).toHaveLength(2);
    expect(errors).toEqual([]);
    c.close();
  });

  test("storm guard: a 4011 within 10 s of the previous one uses the jittered backoff, growing with the row", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.99);
    let tokens = 0;
    const c = make({ getToken: () => `t${++tokens}` });
    const states: StateEvent[] = [];
    c.on("state", (e) => states.push(e));
    await c.connect();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      FakeSocket.all[i]!.drop(4011, "again");
      delays.push(states.at(-1)!.delayMs!);
      await vi.waitFor(() => expect(c.state).toBe("open"), { timeout: 5000 });
    }
    // 1st: at once; then random(0, min(max, 100 * 2^n)) with n = 1, 2, 3 (random() = 0.99).
    expect(delays).toEqual([0, 198, 396, 792]);
    expect(tokens).toBe(5);
    // Another close in between does not reset the row; only time does.
    FakeSocket.all[4]!.drop(1006, "");
    await vi.waitFor(() => expect(c.state).toBe("open"), { timeout: 5000 });
    FakeSocket.all[5]!.drop(4011, "");
    expect(states.at(-1)!.delayMs).toBe(1584);
    c.close();
  });

  test("a 4011 after the window reconnects at once again", async () => {
    let now = 1_000_000;
    vi.spyOn(Date, "now").mockImplementation(() => now);
    const c = make();
    const states: StateEvent[] = [];
    c.on("state", (e) => states.push(e));
    await c.connect();
    FakeSocket.all[0]!.drop(4011, "");
    expect(states.at(-1)!.delayMs).toBe(0);
    await vi.waitFor(() => expect(c.state).toBe("open"), { timeout: 2000 });
    now += SERVICE_RECONNECT_WINDOW_MS;
    FakeSocket.all[1]!.drop(4011, "");
    expect(states.at(-1)!.delayMs).toBe(0);
    c.close();
  });

  test("4011 with reconnect: false stops like any other close (not_connected)", async () => {
    const c = make({ reconnect: false });
    const errors: AetherError[] = [];
    c.on("error", (e) => errors.push(e));
    await c.connect();
    FakeSocket.all[0]!.drop(4011, "please");
    expect(c.state).toBe("closed");
    expect(errors[0]).toMatchObject({ code: "not_connected", closeCode: 4011 });
  });
});
