// The client against two real hub instances sharing a real Redis: cross-instance delivery
// and presence, recovery after dropped TCP connections (cut by a proxy) with no loss and no
// duplicate, failover from one hub URL to the other when a hub dies, and acknowledgements:
// the ack's offset is the delivered message's; with Redis stopped a send rejects `failed`.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { type Ack, AetherError, type Message, type RecoveredEvent } from "../src/index.js";
import { startHub, startRedis, waitFor, type Hub } from "./support/hub.js";
import { startProxy, type Proxy } from "./support/proxy.js";
import { closeAll, collect, id, makeClient, sleep } from "./support/util.js";

let redis: { url: string; stop(): Promise<void> };
let a: Hub;
let b: Hub;
let proxy: Proxy;

beforeAll(async () => {
  redis = await startRedis();
  const env = { AETHER_REDIS_URL: redis.url, AETHER_REDIS_PREFIX: `t${process.pid}:` };
  [a, b] = await Promise.all([startHub({ env }), startHub({ env })]);
  proxy = await startProxy({ host: "127.0.0.1", port: a.port });
});
afterEach(() => closeAll());
afterAll(async () => {
  closeAll();
  await proxy?.close();
  await Promise.all([a?.stop(), b?.stop()]);
  await redis?.stop();
});

describe("redis mode, two instances", () => {
  test("every send helper delivers across instances; presence lists both instances' clients", async () => {
    const g = id("g");
    const ctl = makeClient({ url: a.url, group: g, client: "ctl-" + g });
    const w = makeClient({ url: b.url, group: g, client: "w-" + g });
    const far = makeClient({ url: b.url, group: id("g"), client: id("far") });
    await Promise.all([ctl.connect(), w.connect(), far.connect()]);
    const wGot = collect(w, "cmd");
    const wMsgs = collect(w, "message");
    const farGot = collect(far, "message");
    const echoes = collect(ctl, "message");
    await ctl.sendGroup({ cmd: "run", payload: { n: 1 } });
    await ctl.sendDirect(w.client, { msg: "direct" });
    await ctl.broadcast({ msg: "everyone" });
    await ctl.echo({ msg: "me" });
    await waitFor(() => wGot.length === 1 && wMsgs.length === 2 && farGot.length === 1 && echoes.length === 1);
    expect(wGot[0]).toMatchObject({ target: "group", cmd: "run", from_id: ctl.client, payload: { n: 1 } });
    expect(wMsgs.map((m) => m.msg)).toEqual(["direct", "everyone"]);
    expect(farGot[0]).toMatchObject({ target: "broadcast", msg: "everyone" });
    expect(echoes[0]).toMatchObject({ target: "echo", msg: "me" });
    expect(await ctl.presence()).toEqual([ctl.client, w.client].sort());
    await waitFor(() => ctl.members.size === 2 && w.members.size === 2);
  });

  test("recovery after dropped TCP connections: every message exactly once, in order", async () => {
    const g = id("g");
    const w = makeClient({ url: proxy.url, group: g, client: id("w") });
    const ctl = makeClient({ url: b.url, group: g, client: id("ctl") });
    await Promise.all([w.connect(), ctl.connect()]);
    const cmds = collect(w, "cmd");
    const recovered = collect(w, "recovered");
    const states = collect(w, "state");
    const N = 150;
    const sending = (async () => {
      for (let i = 0; i < N; i++) {
        await ctl.sendDirect(w.client, { cmd: "job", payload: { i } });
        await ctl.sendGroup({ cmd: "all", payload: { i } });
        if (i % 10 === 0) await sleep(10);
      }
    })();
    for (let k = 0; k < 4; k++) {
      await sleep(60);
      if (k % 2 === 1) proxy.pause(); // sometimes stay away a little longer
      proxy.cut();
      await sleep(100);
      proxy.resume();
    }
    await sending;
    await waitFor(() => cmds.length >= 2 * N, { timeoutMs: 15_000 });
    await sleep(300);
    const direct = cmds.filter((m) => m.target === "direct").map((m) => m.payload.i);
    const group = cmds.filter((m) => m.target === "group").map((m) => m.payload.i);
    const seq = [...Array(N).keys()];
    expect(direct).toEqual(seq);
    expect(group).toEqual(seq);
    expect(states.filter((s) => s.to === "open").length).toBeGreaterThanOrEqual(2);
    expect(recovered.length).toBeGreaterThanOrEqual(1);
    for (const r of recovered) expect(r.recovered).toBe(true);
    expect(w.positions().client?.offset).toBe(N);
  });

  test("a message sent while the client is away is replayed once on reconnect (missed > 0)", async () => {
    const g = id("g");
    const w = makeClient({ url: proxy.url, group: g, client: id("w") });
    const ctl = makeClient({ url: b.url, group: g, client: id("ctl") });
    await Promise.all([w.connect(), ctl.connect()]);
    const got: Message[] = collect(w, "cmd");
    const recovered: RecoveredEvent[] = collect(w, "recovered");
    await ctl.sendDirect(w.client, { cmd: "first" });
    await waitFor(() => got.length === 1);
    proxy.pause();
    proxy.cut();
    await waitFor(() => w.state !== "open");
    await ctl.sendDirect(w.client, { cmd: "while-away-1" });
    await ctl.sendGroup({ cmd: "while-away-2" });
    await ctl.presence(); // answered after the hub has routed the two frames before it
    proxy.resume();
    await waitFor(() => recovered.length === 1 && got.length === 3);
    expect(recovered[0]).toMatchObject({ recovered: true, routes: { client: { recovered: true, missed: 1 }, group: { recovered: true, missed: 1 } } });
    await ctl.sendDirect(w.client, { cmd: "live" });
    await waitFor(() => got.length === 4);
    await sleep(200);
    expect(got.map((m) => m.cmd)).toEqual(["first", "while-away-1", "while-away-2", "live"]);
  });

  test("failover: when the first hub URL dies, the client moves to the next and recovers", async () => {
    const env = { AETHER_REDIS_URL: redis.url, AETHER_REDIS_PREFIX: `t${process.pid}:` };
    const c1 = await startHub({ env });
    try {
      const g = id("g");
      const w = makeClient({ url: [c1.url, b.url], group: g, client: id("w") });
      const ctl = makeClient({ url: a.url, group: g, client: id("ctl") });
      const states = collect(w, "state");
      const recovered = collect(w, "recovered");
      const got = collect(w, "cmd");
      await Promise.all([w.connect(), ctl.connect()]);
      expect(states.find((s) => s.to === "connecting")?.url).toBe(c1.url);
      await ctl.sendDirect(w.client, { cmd: "one" });
      await waitFor(() => got.length === 1);
      await c1.stop("SIGKILL");
      await ctl.sendDirect(w.client, { cmd: "two" }); // may be sent before or after the move: recovered either way
      await waitFor(() => states.filter((s) => s.to === "open").length === 2, { timeoutMs: 15_000 });
      expect(states.filter((s) => s.to === "reconnecting" && s.url).at(-1)?.url).toBe(b.url);
      await waitFor(() => recovered.length === 1);
      expect(recovered[0]!.recovered).toBe(true);
      await ctl.sendDirect(w.client, { cmd: "three" });
      await waitFor(() => got.length === 3);
      await sleep(200);
      expect(got.map((m) => m.cmd)).toEqual(["one", "two", "three"]);
      await waitFor(async () => (await ctl.presence()).includes(w.client));
    } finally {
      await c1.stop("SIGKILL");
    }
  });
});

describe("redis mode, acknowledgements", () => {
  test("a send resolves with its ack: ok, with the offset and epoch the recipient on the other instance gets", async () => {
    const g = id("g");
    const ctl = makeClient({ url: a.url, group: g, client: id("ctl") });
    const w = makeClient({ url: b.url, group: g, client: id("w") });
    await Promise.all([ctl.connect(), w.connect()]);
    const got = collect(w, "cmd");
    const acks: Ack[] = [];
    for (let i = 0; i < 3; i++) acks.push(await ctl.sendGroup({ cmd: "job", payload: { i } }));
    acks.push(await ctl.sendDirect(w.client, { cmd: "direct" }));
    for (const ack of acks) expect(ack).toMatchObject({ status: "ok", offset: expect.any(Number) as number, epoch: expect.any(String) as string });
    expect(acks[1]!.offset).toBe(acks[0]!.offset! + 1);
    expect(acks[2]!.offset).toBe(acks[1]!.offset! + 1);
    await waitFor(() => got.length === 4);
    expect(got.map((m) => [m.offset, m.epoch])).toEqual(acks.map((x) => [x.offset, x.epoch]));
    for (const m of got) expect(m).not.toHaveProperty("ack_id");
    const echo = await ctl.echo({ msg: "me" });
    expect(echo.status).toBe("ok");
  });

  test("with Redis stopped, a send rejects failed (unavailable) and the socket stays open", async () => {
    // Its own Redis and hub: stopping this Redis affects no other test.
    const r = await startRedis();
    let h: Hub | undefined;
    try {
      h = await startHub({ env: { AETHER_REDIS_URL: r.url, AETHER_REDIS_PREFIX: `t${process.pid}x:` } });
      const hub = h;
      const g = id("g");
      const ctl = makeClient({ url: hub.url, group: g, client: id("ctl") });
      await ctl.connect();
      const states = collect(ctl, "state");
      expect(await ctl.sendGroup({ cmd: "before" })).toMatchObject({ status: "ok" });
      await r.stop();
      await waitFor(
        async () => {
          try {
            return (await fetch(hub.httpUrl + "/readyz", { signal: AbortSignal.timeout(1000) })).status === 503;
          } catch {
            return false;
          }
        },
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      const err = await ctl.sendGroup({ cmd: "during" }).then(
        (ack) => ack,
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ code: "failed", reason: "unavailable" });
      expect(err).toBeInstanceOf(AetherError);
      expect(ctl.state).toBe("open");
      expect(states).toEqual([]); // never disconnected
      // echo never touches Redis: still acked ok.
      expect(await ctl.echo({ msg: "still here" })).toMatchObject({ status: "ok" });
    } finally {
      closeAll();
      await h?.stop();
      await r.stop();
    }
  });
});
