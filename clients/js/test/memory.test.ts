// The client against the real hub in memory mode (one instance): every send helper and its
// events, presence and the live members set, validation errors, the bounded queue, close(),
// reconnect after a hub restart, tokens (4001 → new token), refusals, a 4003 stop,
// recovered:false, dead-connection detection, online/visibilitychange, no listener leak,
// acknowledgements (ok with offsets, after a queue flush, unconfirmed on a drop, acks off).
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from "vitest";
import { WebSocket } from "ws";
import { type Ack, type AetherClient, AetherError, type Message, type StateEvent } from "../src/index.js";
import { startHub, waitFor, type Hub } from "./support/hub.js";
import { startProxy, type Proxy } from "./support/proxy.js";
import { closeAll, collect, connectedPair, id, makeClient, signToken, sleep } from "./support/util.js";

let hub: Hub;
const extra: Array<{ stop(): Promise<void> } | Proxy> = [];

beforeAll(async () => {
  hub = await startHub();
});
afterEach(() => closeAll());
afterAll(async () => {
  closeAll();
  await Promise.all(extra.map((x) => ("cut" in x ? x.close() : x.stop())));
  await hub?.stop();
});

async function ownHub(env: Record<string, string>): Promise<Hub> {
  const h = await startHub({ env });
  extra.push(h);
  return h;
}
async function ownProxy(h: Hub): Promise<Proxy> {
  const p = await startProxy({ host: "127.0.0.1", port: h.port });
  extra.push(p);
  return p;
}
const opens = (states: StateEvent[]) => states.filter((s) => s.to === "open").length;

/** A real `ws` WebSocket that also records every frame the client writes. */
function spySocket(): { WebSocket: typeof WebSocket; frames: Array<Record<string, unknown>> } {
  const frames: Array<Record<string, unknown>> = [];
  class Spy extends WebSocket {
    override send(data: string): void {
      frames.push(JSON.parse(data) as Record<string, unknown>);
      super.send(data);
    }
  }
  return { WebSocket: Spy, frames };
}

describe("sending and receiving", () => {
  test("sendGroup, sendDirect, broadcast and echo deliver to the right clients with the right fields", async () => {
    const g = id("g");
    const other = id("g");
    const ctl = makeClient({ url: hub.url, group: g, client: id("ctl") });
    const w1 = makeClient({ url: hub.url + "/", group: g, client: id("w1") });
    const w2 = makeClient({ url: hub.httpUrl, group: g, client: id("w2") });
    const outsider = makeClient({ url: hub.url, group: other, client: id("out") });
    await Promise.all([ctl, w1, w2, outsider].map((c) => c.connect()));
    const got = new Map<AetherClient, Message[]>();
    for (const c of [ctl, w1, w2, outsider]) {
      const list: Message[] = [];
      got.set(c, list);
      c.on("message", (m) => list.push(m));
      c.on("cmd", (m) => list.push(m));
    }

    await ctl.sendGroup({ cmd: "start", payload: { job: 7 } });
    await ctl.sendDirect(w1.client, { msg: "hello", sentAt: "2026-01-02T03:04:05Z" });
    await ctl.broadcast({ msg: "all", payload: { b: true } });
    await ctl.echo({ cmd: "ping", payload: { x: [1, 2] } });

    await waitFor(() => got.get(w1)!.length === 3 && got.get(w2)!.length === 2 && got.get(outsider)!.length === 1 && got.get(ctl)!.length === 1);
    await sleep(200); // nothing more arrives
    const [g1, d1, b1] = got.get(w1)!;
    expect(g1).toMatchObject({ version: "3", msg_type: "cmd", target: "group", from_id: ctl.client, group_id: g, cmd: "start", payload: { job: 7 } });
    expect(typeof g1!.offset).toBe("number");
    expect(typeof g1!.epoch).toBe("string");
    expect(d1).toMatchObject({ msg_type: "msg", target: "direct", to_id: w1.client, msg: "hello", sent_at: "2026-01-02T03:04:05Z", payload: {} });
    expect(b1).toMatchObject({ msg_type: "msg", target: "broadcast", msg: "all", payload: { b: true } });
    expect(got.get(w2)!.map((m) => m.target)).toEqual(["group", "broadcast"]);
    expect(got.get(outsider)!.map((m) => m.target)).toEqual(["broadcast"]);
    expect(got.get(ctl)![0]).toMatchObject({ msg_type: "cmd", target: "echo", cmd: "ping", payload: { x: [1, 2] } });
  });

  test("cmd and message events are separate; messages from one sender arrive in order", async () => {
    const [a, b] = await connectedPair(hub.url);
    const msgs = collect(b, "message");
    const cmds = collect(b, "cmd");
    for (let i = 0; i < 30; i++) void a.sendDirect(b.client, i % 2 ? { cmd: "c", payload: { i } } : { msg: "m", payload: { i } });
    await waitFor(() => msgs.length + cmds.length === 30);
    expect(msgs.map((m) => m.payload.i)).toEqual([...Array(15).keys()].map((k) => 2 * k));
    expect(cmds.map((m) => m.payload.i)).toEqual([...Array(15).keys()].map((k) => 2 * k + 1));
  });
});

describe("presence", () => {
  test("presence() answers the sorted members; join/leave events keep the live members set", async () => {
    const g = id("g");
    const ctl = makeClient({ url: hub.url, group: g, client: "ctl-" + g });
    await ctl.connect();
    await waitFor(() => ctl.members.has(ctl.client));
    const events = collect(ctl, "presence");
    const memberEvents = collect(ctl, "members");
    const w = makeClient({ url: hub.url, group: g, client: "a-" + g });
    await w.connect();
    await waitFor(() => events.length === 1);
    expect(events[0]).toMatchObject({ event: "join", clientId: w.client });
    expect([...ctl.members].sort()).toEqual([w.client, ctl.client].sort());
    expect(await ctl.presence()).toEqual([w.client, ctl.client].sort());
    expect(await w.presence()).toEqual([w.client, ctl.client].sort());
    await waitFor(() => w.members.size === 2);
    w.close();
    await waitFor(() => events.length === 2);
    expect(events[1]).toMatchObject({ event: "leave", clientId: w.client });
    expect([...ctl.members]).toEqual([ctl.client]);
    expect(memberEvents.length).toBeGreaterThanOrEqual(2);
    expect([...memberEvents.at(-1)!]).toEqual([ctl.client]);
  });
});

describe("state, validation, queue, close", () => {
  test("state events: idle → connecting → open → closed, and no reconnect after close()", async () => {
    const c = makeClient({ url: hub.url, group: id("g"), client: id("c") });
    const states = collect(c, "state");
    expect(c.state).toBe("idle");
    await c.connect();
    c.close();
    await sleep(500);
    expect(states.map((s) => s.to)).toEqual(["connecting", "open", "closed"]);
    expect(c.state).toBe("closed");
    await expect(c.connect()).rejects.toMatchObject({ code: "closed" });
    await expect(c.sendGroup({ msg: "x" })).rejects.toMatchObject({ code: "closed" });
  });

  test("invalid sends reject with AetherError and send nothing; the socket stays open", async () => {
    const [a, b] = await connectedPair(hub.url);
    const got = collect(b, "message");
    const errors = collect(a, "error");
    const states = collect(a, "state");
    const bad: Array<[Promise<Ack>, string]> = [
      [a.sendDirect("not a vision id", { msg: "x" }), "invalid_message"],
      [a.sendDirect("", { msg: "x" }), "invalid_message"],
      [a.sendGroup({ payload: null as never }), "invalid_message"],
      [a.sendGroup({ payload: [1, 2] as never }), "invalid_message"],
      [a.broadcast({ msg: 5 as never }), "invalid_message"],
      [a.echo({ sentAt: "not a date" }), "invalid_message"],
      [a.sendGroup({ msg: "x", to_id: "b" } as never), "invalid_message"],
      [a.sendGroup({ payload: { big: "x".repeat(70_000) } }), "too_large"],
    ];
    for (const [p, code] of bad) {
      const e = await p.then(() => undefined, (err: unknown) => err);
      expect(e).toBeInstanceOf(AetherError);
      expect((e as AetherError).code).toBe(code);
    }
    await a.sendGroup({ msg: "still here" });
    await waitFor(() => got.length === 1);
    expect(got[0]!.msg).toBe("still here");
    expect(a.state).toBe("open");
    expect(states).toEqual([]);
    expect(errors).toEqual([]);
  });

  test("the bounded queue: sends before open wait and flush in order; when full they reject", async () => {
    const g = id("g");
    const rx = makeClient({ url: hub.url, group: g, client: id("rx") });
    await rx.connect();
    const got = collect(rx, "message");
    const tx = makeClient({ url: hub.url, group: g, client: id("tx"), queueSize: 3 });
    const sent = [tx.sendGroup({ msg: "1" }), tx.sendGroup({ msg: "2" }), tx.sendDirect(rx.client, { msg: "3" })];
    await expect(tx.sendGroup({ msg: "4" })).rejects.toMatchObject({ code: "queue_full" });
    await tx.connect();
    const acks = await Promise.all(sent);
    expect(acks.map((a) => a.status)).toEqual(["ok", "ok", "ok"]);
    expect(acks[1]!.offset).toBe(acks[0]!.offset! + 1); // two group sends in a row
    await waitFor(() => got.length === 3);
    expect(got.map((m) => m.msg)).toEqual(["1", "2", "3"]);

    const off = makeClient({ url: hub.url, group: g, client: id("off"), queueSize: 0 });
    await expect(off.sendGroup({ msg: "x" })).rejects.toMatchObject({ code: "not_connected" });

    const closing = makeClient({ url: hub.url, group: g, client: id("cl") });
    const pending = closing.sendGroup({ msg: "never" });
    closing.close();
    await expect(pending).rejects.toMatchObject({ code: "closed" });
    await sleep(200);
    expect(got.length).toBe(3);
  });

  test("a send while the connection is down waits in the queue and arrives after the reconnect", async () => {
    const proxy = await ownProxy(hub);
    const g = id("g");
    const rx = makeClient({ url: hub.url, group: g, client: id("rx") });
    await rx.connect();
    const got = collect(rx, "message");
    const tx = makeClient({ url: proxy.url, group: g, client: id("tx") });
    await tx.connect();
    proxy.pause();
    proxy.cut();
    await waitFor(() => tx.state !== "open");
    const p = [tx.sendGroup({ msg: "a" }), tx.sendGroup({ msg: "b" })];
    proxy.resume();
    const acks = await Promise.all(p); // acked after the reconnect's flush
    expect(acks.map((a) => a.status)).toEqual(["ok", "ok"]);
    expect(typeof acks[0]!.offset).toBe("number");
    expect(acks[1]!.offset).toBe(acks[0]!.offset! + 1);
    await waitFor(() => got.length === 2);
    expect(got.map((m) => m.msg)).toEqual(["a", "b"]);
    expect(got.map((m) => m.offset)).toEqual(acks.map((a) => a.offset));
  });
});

describe("reconnect", () => {
  test("after the hub is killed and restarted: reconnects, asks presence again, surfaces recovered:false", async () => {
    const h = await ownHub({});
    const g = id("g");
    const c = makeClient({ url: h.url, group: g, client: id("c") });
    const states = collect(c, "state");
    const recovered = collect(c, "recovered");
    await c.connect();
    await waitFor(() => c.members.size === 1);
    await h.stop("SIGKILL");
    await waitFor(() => c.state === "reconnecting");
    await sleep(300);
    await h.restart();
    await waitFor(() => opens(states) === 2, { timeoutMs: 15_000 });
    await waitFor(() => recovered.length === 1);
    expect(recovered[0]!.recovered).toBe(false); // a restarted in-memory hub lost its history: new epoch
    expect(recovered[0]!.routes.group).toMatchObject({ recovered: false });
    expect(states.find((s) => s.to === "reconnecting")?.code).toBe(1006);
    const peer = makeClient({ url: h.url, group: g, client: id("p") });
    await peer.connect();
    await waitFor(() => c.members.has(peer.client) && c.members.has(c.client));
    const got = collect(c, "message");
    await peer.sendGroup({ msg: "after restart" });
    await waitFor(() => got.length === 1);
  });

  test("a graceful hub shutdown (1001) reconnects too", async () => {
    const h = await ownHub({});
    const c = makeClient({ url: h.url, group: id("g"), client: id("c") });
    const states = collect(c, "state");
    await c.connect();
    await h.restart(); // SIGTERM: every socket gets 1001
    await waitFor(() => opens(states) === 2, { timeoutMs: 15_000 });
    expect(states.find((s) => s.to === "reconnecting")?.code).toBe(1001);
  });

  test("recovered:false when the hub no longer keeps what was missed; nothing partial is replayed", async () => {
    const h = await ownHub({ AETHER_HISTORY_SIZE: "3" });
    const proxy = await ownProxy(h);
    const g = id("g");
    const w = makeClient({ url: proxy.url, group: g, client: id("w") });
    const ctl = makeClient({ url: h.url, group: g, client: id("ctl") });
    await Promise.all([w.connect(), ctl.connect()]);
    const got = collect(w, "cmd");
    const recovered = collect(w, "recovered");
    await ctl.sendDirect(w.client, { cmd: "before" });
    await waitFor(() => got.length === 1);
    proxy.pause();
    proxy.cut();
    await waitFor(() => w.state !== "open");
    for (let i = 0; i < 6; i++) await ctl.sendDirect(w.client, { cmd: "missed", payload: { i } });
    await ctl.presence(); // answered after the hub has routed the six frames before it
    proxy.resume();
    await waitFor(() => recovered.length === 1, { timeoutMs: 10_000 });
    expect(recovered[0]!.recovered).toBe(false);
    expect(recovered[0]!.routes.client).toMatchObject({ recovered: false, missed: 0 });
    expect(recovered[0]!.routes.group).toMatchObject({ recovered: true });
    await ctl.sendDirect(w.client, { cmd: "after" });
    await waitFor(() => got.length === 2);
    expect(got.map((m) => m.cmd)).toEqual(["before", "after"]);
  });

  test("with history off on the hub every reconnect surfaces recovered:false", async () => {
    const h = await ownHub({ AETHER_HISTORY_SIZE: "0" });
    const proxy = await ownProxy(h);
    const c = makeClient({ url: proxy.url, group: id("g"), client: id("c") });
    const recovered = collect(c, "recovered");
    await c.connect();
    proxy.cut();
    await waitFor(() => recovered.length === 1);
    expect(recovered[0]).toMatchObject({ recovered: false, routes: { client: { recovered: false, epoch: "", offset: 0 } } });
  });

  test("a dead connection (no inbound data within deadAfterMs) is dropped and reopened", async () => {
    const c = makeClient({ url: hub.url, group: id("g"), client: id("c"), heartbeatIntervalMs: 60_000, deadAfterMs: 400 });
    const states = collect(c, "state");
    await c.connect();
    await waitFor(() => states.some((s) => s.to === "reconnecting"), { timeoutMs: 5000 });
    expect(states.find((s) => s.to === "reconnecting")?.reason).toMatch(/dead connection/);
    await waitFor(() => opens(states) >= 2);
  });

  test("heartbeats keep a quiet connection alive", async () => {
    const c = makeClient({ url: hub.url, group: id("g"), client: id("c"), heartbeatIntervalMs: 100, deadAfterMs: 600 });
    const states = collect(c, "state");
    await c.connect();
    await sleep(1500);
    expect(states.map((s) => s.to)).toEqual(["connecting", "open"]);
  });

  test("online and visibilitychange reconnect at once; their listeners go with close()", async () => {
    const proxy = await ownProxy(hub);
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
    const spyAdd = vi.spyOn(win, "addEventListener");
    const spyRemove = vi.spyOn(win, "removeEventListener");
    const random = vi.spyOn(Math, "random").mockReturnValue(0.99);
    try {
      const c = makeClient({
        url: proxy.url, group: id("g"), client: id("c"),
        reconnect: { minDelayMs: 60_000, maxDelayMs: 120_000 },
        environment: { window: win, document: doc },
      });
      const states = collect(c, "state");
      await c.connect();
      proxy.cut();
      await waitFor(() => c.state === "reconnecting");
      expect(states.at(-1)!.delayMs).toBeGreaterThan(50_000);
      win.dispatchEvent(new Event("online"));
      await waitFor(() => opens(states) === 2, { timeoutMs: 5000 });

      proxy.cut();
      await waitFor(() => c.state === "reconnecting" && states.at(-1)!.delayMs !== undefined);
      doc.visibilityState = "hidden";
      doc.dispatchEvent(new Event("visibilitychange"));
      await sleep(200);
      expect(c.state).toBe("reconnecting");
      doc.visibilityState = "visible";
      doc.dispatchEvent(new Event("visibilitychange"));
      await waitFor(() => opens(states) === 3, { timeoutMs: 5000 });

      expect(spyAdd).toHaveBeenCalledTimes(1);
      c.close();
      expect(spyRemove).toHaveBeenCalledTimes(1);
      win.dispatchEvent(new Event("online"));
      await sleep(200);
      expect(c.state).toBe("closed");
    } finally {
      random.mockRestore();
    }
  });

  test("no listener leak after 50 reconnects; every message still arrives exactly once", async () => {
    const h = await ownHub({});
    const proxy = await ownProxy(h);
    const g = id("g");
    let added = 0;
    let removed = 0;
    const target = () => ({
      addEventListener: () => void added++,
      removeEventListener: () => void removed++,
    });
    const c = makeClient({ url: proxy.url, group: g, client: id("c"), environment: { window: target(), document: target() } });
    const states = collect(c, "state");
    const got = collect(c, "message");
    await c.connect();
    const listenersBefore = c.listenerCount();
    for (let i = 1; i <= 50; i++) {
      proxy.cut();
      await waitFor(() => opens(states) === i + 1, { timeoutMs: 5000 });
    }
    expect(c.listenerCount()).toBe(listenersBefore);
    expect(added).toBe(2);
    const peer = makeClient({ url: h.url, group: g, client: id("p") });
    await peer.connect();
    await peer.sendGroup({ msg: "once" });
    await waitFor(() => got.length === 1);
    await sleep(300);
    expect(got.length).toBe(1);
    // The hub holds exactly the two live sockets: no old socket was left open.
    await waitFor(async () => /^aether_connections_open(\{[^}]*\})? 2$/m.test(await (await fetch(h.httpUrl + "/metrics")).text()));
    await waitFor(() => c.members.size === 2);
    c.close();
    expect(removed).toBe(2);
  });
});

describe("liveness with throttled timers", () => {
  test("a send checks the dead deadline against the clock: a stale socket is replaced and the send still arrives", async () => {
    const g = id("g");
    const rx = makeClient({ url: hub.url, group: g, client: id("rx") });
    const c = makeClient({ url: hub.url, group: g, client: id("c"), heartbeatIntervalMs: 60_000, deadAfterMs: 20_000 });
    await Promise.all([rx.connect(), c.connect()]);
    const got = collect(rx, "message");
    const states = collect(c, "state");
    // A background tab: the timers did not run, but the clock moved on past the deadline.
    const realNow = Date.now.bind(Date);
    const now = vi.spyOn(Date, "now").mockImplementation(() => realNow() + 25_000);
    try {
      await c.sendGroup({ msg: "after sleep" });
      expect(states[0]).toMatchObject({ to: "reconnecting", reason: expect.stringMatching(/dead connection/) as string });
      await waitFor(() => got.length === 1);
      expect(got[0]!.msg).toBe("after sleep");
      expect(c.state).toBe("open");
    } finally {
      now.mockRestore();
    }
  });
});

describe("hub limits", () => {
  test("4029 (sent too fast) reconnects after at least 1 s", async () => {
    const h = await ownHub({ AETHER_RATE_LIMIT: "5" });
    const c = makeClient({ url: h.url, group: id("g"), client: id("c") });
    const states = collect(c, "state");
    await c.connect();
    for (let i = 0; i < 40 && c.state === "open"; i++) await c.echo({ msg: String(i) }).catch(() => undefined);
    await waitFor(() => states.some((s) => s.code === 4029));
    expect(states.find((s) => s.code === 4029)!.delayMs).toBeGreaterThanOrEqual(1000);
    await waitFor(() => opens(states) === 2, { timeoutMs: 10_000 });
  });

  test("maxMessageBytes refuses before sending; a hub with a lower limit closes 1009 and the client stops", async () => {
    const h = await ownHub({ AETHER_MAX_MESSAGE_BYTES: "1024" });
    const big = { payload: { s: "x".repeat(2000) } };
    const careful = makeClient({ url: h.url, group: id("g"), client: id("a"), maxMessageBytes: 1024 });
    await careful.connect();
    await expect(careful.sendGroup(big)).rejects.toMatchObject({ code: "too_large" });
    expect(careful.state).toBe("open");
    const careless = makeClient({ url: h.url, group: id("g"), client: id("b") });
    const errors = collect(careless, "error");
    await careless.connect();
    await careless.sendGroup(big);
    await waitFor(() => careless.state === "closed");
    expect(errors[0]).toMatchObject({ code: "hub_closed", closeCode: 1009 });
  });
});

describe("credentials", () => {
  const secret = "test-secret-" + process.pid;
  let th: Hub;
  beforeAll(async () => {
    th = await ownHub({ AETHER_TOKEN_SECRETS: secret, AETHER_TOKEN_LEEWAY_SECS: "0", AETHER_API_KEYS: "key-1" });
  });

  test("4001 → getToken() again → reconnect; the token rides in the aether.token. subprotocol", async () => {
    const g = id("g");
    const client = id("c");
    let calls = 0;
    const c = makeClient({
      url: th.url, group: g, client,
      getToken: () => {
        calls++;
        const exp = Math.floor(Date.now() / 1000) + (calls === 1 ? 2 : 3600);
        return signToken(secret, { sub: client, grp: g, exp });
      },
    });
    const states = collect(c, "state");
    await c.connect();
    expect(calls).toBe(1);
    await waitFor(() => states.some((s) => s.code === 4001), { timeoutMs: 15_000 });
    await waitFor(() => opens(states) === 2);
    expect(calls).toBe(2);
    expect(states.find((s) => s.code === 4001)!.delayMs).toBe(0);
    const peer = makeClient({ url: th.url, group: g, client: id("p"), apiKey: "key-1" });
    await peer.connect();
    const got = collect(c, "message");
    await peer.sendDirect(client, { msg: "fresh token" });
    await waitFor(() => got.length === 1);
  });

  test("4001 with a static token stops with a token error", async () => {
    const g = id("g");
    const client = id("c");
    const token = signToken(secret, { sub: client, grp: [g], exp: Math.floor(Date.now() / 1000) + 2 });
    const c = makeClient({ url: th.url, group: g, client, token });
    const errors = collect(c, "error");
    await c.connect();
    await waitFor(() => c.state === "closed", { timeoutMs: 15_000 });
    expect(errors[0]).toMatchObject({ code: "token", closeCode: 4001 });
  });

  test("refused upgrades: a bad token (401) and another group's token (403) stop; a bad API key stops", async () => {
    const g = id("g");
    const client = id("c");
    const bad = makeClient({ url: th.url, group: g, client, token: signToken("wrong", { sub: client, grp: g }) });
    await expect(bad.connect()).rejects.toMatchObject({ code: "refused", closeCode: 401 });
    const other = makeClient({ url: th.url, group: g, client, token: signToken(secret, { sub: client, grp: "elsewhere" }) });
    await expect(other.connect()).rejects.toMatchObject({ code: "refused", closeCode: 403 });
    const key = makeClient({ url: th.url, group: g, client, apiKey: "nope" });
    await expect(key.connect()).rejects.toMatchObject({ code: "refused", closeCode: 401 });
    const good = makeClient({ url: th.url, group: g, client, apiKey: "key-1" });
    await good.connect();
    expect(good.state).toBe("open");
  });

  test("a getToken() that throws is reported as an error and retried", async () => {
    const g = id("g");
    const client = id("c");
    let calls = 0;
    const c = makeClient({
      url: th.url, group: g, client,
      getToken: () => {
        if (++calls === 1) throw new Error("auth backend down");
        return signToken(secret, { sub: client, grp: g });
      },
    });
    const errors = collect(c, "error");
    await c.connect();
    expect(calls).toBe(2);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: "token", message: expect.stringMatching(/auth backend down/) as string });
  });

  test("a 401 with getToken() asks for a new token and retries", async () => {
    const g = id("g");
    const client = id("c");
    let calls = 0;
    const c = makeClient({
      url: th.url, group: g, client,
      getToken: () => (++calls < 3 ? "garbage" : signToken(secret, { sub: client, grp: "*" })),
    });
    await c.connect();
    expect(calls).toBe(3);
  });
});

describe("policy close", () => {
  test("4003 (client broadcast disabled) stops with an error instead of looping", async () => {
    const h = await ownHub({ AETHER_ALLOW_CLIENT_BROADCAST: "false" });
    const c = makeClient({ url: h.url, group: id("g"), client: id("c") });
    const errors = collect(c, "error");
    await c.connect();
    // A frame that closes the socket gets no ack: the send settles unconfirmed with the close.
    expect(await c.broadcast({ msg: "x" })).toMatchObject({ status: "unconfirmed", reason: "disconnected" });
    await waitFor(() => c.state === "closed");
    expect(errors[0]).toMatchObject({ code: "hub_closed", closeCode: 4003 });
  });
});

describe("acknowledgements", () => {
  test("every send resolves with its ack: ok, consecutive group offsets; echo's ack after the echo; recipients never see ack_id", async () => {
    const g = id("g");
    const spy = spySocket();
    const ctl = makeClient({ url: hub.url, group: g, client: id("ctl"), WebSocket: spy.WebSocket });
    const w = makeClient({ url: hub.url, group: g, client: id("w") });
    await Promise.all([ctl.connect(), w.connect()]);
    const wGot: Message[] = [];
    w.on("message", (m) => wGot.push(m));
    w.on("cmd", (m) => wGot.push(m));
    const ctlGot = collect(ctl, "message");
    const ctlCmds = collect(ctl, "cmd");

    const groupAcks: Ack[] = [];
    for (let i = 0; i < 5; i++) groupAcks.push(await ctl.sendGroup({ cmd: "step", payload: { i } }));
    for (const a of groupAcks) {
      expect(a.status).toBe("ok");
      expect(typeof a.offset).toBe("number");
      expect(a.epoch).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    }
    const offsets = groupAcks.map((a) => a.offset!);
    expect(offsets.slice(1)).toEqual(offsets.slice(0, -1).map((o) => o + 1));
    expect(new Set(groupAcks.map((a) => a.epoch)).size).toBe(1);

    const direct = await ctl.sendDirect(w.client, { msg: "direct" });
    expect(direct).toMatchObject({ status: "ok", offset: expect.any(Number) as number, epoch: expect.any(String) as string });
    const all = await ctl.broadcast({ msg: "all" });
    expect(all).toMatchObject({ status: "ok", offset: expect.any(Number) as number });
    const echo = await ctl.echo({ msg: "me" });
    expect(echo.status).toBe("ok");
    expect(echo.offset).toBeUndefined(); // echo is not kept in history
    expect(ctlGot.map((m) => m.msg)).toEqual(["me"]); // the echo arrived before its ack

    // Every frame written carried its ack_id; the recipients' copies do not.
    const written = spy.frames.filter((f) => f.msg_type === "msg" || f.msg_type === "cmd");
    expect(written.map((f) => f.ack_id)).toEqual([...groupAcks, direct, all, echo].map((a) => a.ackId));
    await waitFor(() => wGot.length === 7);
    await sleep(200);
    expect(wGot.length).toBe(7);
    for (const m of wGot) expect(m).not.toHaveProperty("ack_id");
    expect(wGot.filter((m) => m.target === "group").map((m) => m.offset)).toEqual(offsets);
    expect(wGot.find((m) => m.target === "direct")!.offset).toBe(direct.offset);
    // The ack frames were consumed by the client, not emitted as messages.
    expect(ctlGot.length + ctlCmds.length).toBe(1);
    for (const m of [...ctlGot, ...wGot]) expect(m.msg_type).not.toBe("ack");
  });

  test("a send written just before the connection drops resolves unconfirmed and is never resent", async () => {
    const proxy = await ownProxy(hub);
    const g = id("g");
    const spy = spySocket();
    const tx = makeClient({ url: proxy.url, group: g, client: id("tx"), WebSocket: spy.WebSocket });
    const states = collect(tx, "state");
    await tx.connect();
    const pending = tx.sendGroup({ msg: "maybe" });
    proxy.pause();
    proxy.cut(); // in the same tick: the ack cannot have come back
    expect(await pending).toMatchObject({ status: "unconfirmed", reason: "disconnected" });
    proxy.resume();
    await waitFor(() => opens(states) === 2);
    expect(await tx.sendGroup({ msg: "after" })).toMatchObject({ status: "ok" });
    expect(spy.frames.filter((f) => f.msg === "maybe")).toHaveLength(1);
  });

  test("acks: false: frames carry no ack_id and a send resolves { status: \"sent\" } once written", async () => {
    const g = id("g");
    const spy = spySocket();
    const tx = makeClient({ url: hub.url, group: g, client: id("tx"), acks: false, WebSocket: spy.WebSocket });
    const rx = makeClient({ url: hub.url, group: g, client: id("rx") });
    await Promise.all([tx.connect(), rx.connect()]);
    const got = collect(rx, "message");
    const echoes = collect(tx, "message");
    expect(await tx.sendGroup({ msg: "one" })).toEqual({ status: "sent" });
    expect(await tx.echo({ msg: "two" })).toEqual({ status: "sent" });
    await waitFor(() => got.length === 1 && echoes.length === 1);
    expect(spy.frames.filter((f) => "ack_id" in f)).toEqual([]);
  });
});
