// The client against the real hub's server API (docs/protocol.md section 11): POST
// /v3/disconnect with reconnect false closes the socket with 4010 and the client stops for good
// (state closed, error disconnected_by_service with the reason, no reconnect); with reconnect
// true it closes with 4011 and the client is back at once with a fresh token from getToken(), and
// a second 4011 in a row falls back to the backoff; POST /v3/revoke closes with 4001 and the
// client reconnects with a fresh token, or, while getToken() still returns a revoked token, keeps
// retrying with backoff (401 at the upgrade) until it gets a good one.
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from "vitest";
import { WebSocket } from "ws";
import type { StateEvent, WebSocketConstructor } from "../src/index.js";
import { startHub, waitFor, type Hub } from "./support/hub.js";
import { closeAll, collect, id, makeClient, signToken, sleep } from "./support/util.js";

const SECRET = "service-secret-" + process.pid;
const ADMIN_KEY = "some-admin-key";

let hub: Hub;

beforeAll(async () => {
  hub = await startHub({ env: { AETHER_TOKEN_SECRETS: SECRET, AETHER_ADMIN_API_KEYS: ADMIN_KEY, AETHER_TOKEN_LEEWAY_SECS: "0" } });
});
afterEach(() => {
  closeAll();
  vi.restoreAllMocks();
});
afterAll(async () => {
  closeAll();
  await hub?.stop();
});

const opens = (states: StateEvent[]) => states.filter((s) => s.to === "open").length;
const nowSecs = () => Math.floor(Date.now() / 1000);

/** An admin call of section 11; expects 202. */
async function admin(path: string, body: Record<string, unknown>): Promise<void> {
  const res = await fetch(hub.httpUrl + path, {
    method: "POST",
    headers: { "X-Aether-API-Key": ADMIN_KEY, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  expect(res.status, `${path}: ${await res.clone().text()}`).toBe(202);
  expect(await res.json()).toEqual({ status: "accepted" });
}

/** A `ws` WebSocket that records the token each connect attempt offered in its subprotocol. */
function tokenSpy(): { WebSocket: WebSocketConstructor; offered: string[] } {
  const offered: string[] = [];
  class Spy extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      const list = typeof protocols === "string" ? [protocols] : (protocols ?? []);
      offered.push(list.find((p) => p.startsWith("aether.token."))?.slice("aether.token.".length) ?? "");
    }
  }
  return { WebSocket: Spy, offered };
}

/** A client with getToken() signing a fresh token per call (a distinct jti each), and a peer with its own. */
function tokenClient(group: string, extra: { iat?: () => number } = {}) {
  const client = id("c");
  const issued: string[] = [];
  const spy = tokenSpy();
  const c = makeClient({
    url: hub.url, group, client, WebSocket: spy.WebSocket,
    getToken: () => {
      const t = signToken(SECRET, { sub: client, grp: group, jti: id("jti"), iat: extra.iat ? extra.iat() : nowSecs() });
      issued.push(t);
      return t;
    },
  });
  return { c, issued, offered: spy.offered };
}

function peerOf(group: string) {
  const client = id("p");
  return makeClient({ url: hub.url, group, client, getToken: () => signToken(SECRET, { sub: client, grp: group }) });
}

describe("POST /v3/disconnect", () => {
  test("reconnect false: 4010, the client stops for good with disconnected_by_service and the reason", async () => {
    const g = id("g");
    const { c, issued } = tokenClient(g);
    const peer = peerOf(g);
    await Promise.all([c.connect(), peer.connect()]);
    await waitFor(() => peer.members.has(c.client));
    const states = collect(c, "state");
    const errors = collect(c, "error");
    const peerPresence = collect(peer, "presence");

    await admin("/v3/disconnect", { client_id: c.client, reconnect: false, reason: "account suspended" });
    await waitFor(() => c.state === "closed", { timeoutMs: 5000 });
    expect(states).toEqual([{ from: "open", to: "closed", code: 4010, reason: "account suspended" }]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: "disconnected_by_service", closeCode: 4010, reason: "account suspended" });
    await expect(c.connect()).rejects.toMatchObject({ code: "closed" });
    await expect(c.sendGroup({ msg: "after" })).rejects.toMatchObject({ code: "closed" });

    // No reconnect: nothing happens within a bounded wait (well past the client's backoff).
    await waitFor(() => peerPresence.some((p) => p.event === "leave" && p.clientId === c.client), { timeoutMs: 5000 });
    await sleep(2000);
    expect(states).toHaveLength(1);
    expect(issued).toHaveLength(1); // getToken() was not called again
    expect(c.state).toBe("closed");
    expect(await peer.presence()).toEqual([peer.client]);
    expect(peer.state).toBe("open"); // only the named client was disconnected
  });

  test("reconnect false without a reason: the hub's default reason", async () => {
    const g = id("g");
    const { c } = tokenClient(g);
    await c.connect();
    const errors = collect(c, "error");
    await admin("/v3/disconnect", { client_id: c.client });
    await waitFor(() => c.state === "closed", { timeoutMs: 5000 });
    expect(errors[0]).toMatchObject({ code: "disconnected_by_service", closeCode: 4010, reason: "disconnected by the service" });
  });

  test("reconnect true: 4011, the client is back at once with a fresh token from getToken()", async () => {
    const g = id("g");
    const { c, issued, offered } = tokenClient(g);
    const peer = peerOf(g);
    await Promise.all([c.connect(), peer.connect()]);
    const states = collect(c, "state");
    const errors = collect(c, "error");

    const t0 = Date.now();
    await admin("/v3/disconnect", { client_id: c.client, reconnect: true, reason: "moved to line 4" });
    await waitFor(() => opens(states) === 1, { timeoutMs: 5000 });
    const took = Date.now() - t0;
    const reconnecting = states.find((s) => s.to === "reconnecting" && s.code !== undefined)!;
    expect(reconnecting).toMatchObject({ from: "open", code: 4011, reason: "moved to line 4", delayMs: 0 });
    expect(states.map((s) => s.to)).toEqual(["reconnecting", "reconnecting", "open"]); // the wait (0 ms), the attempt, the open
    expect(took).toBeLessThan(3000); // the hub closes within 1 s; the client goes back with no delay
    expect(errors).toEqual([]);
    expect(issued).toHaveLength(2);
    expect(offered).toEqual(issued); // the second socket offered the fresh token
    expect(issued[1]).not.toBe(issued[0]);

    // The new socket works.
    const got = collect(c, "message");
    await peer.sendDirect(c.client, { msg: "welcome back" });
    await waitFor(() => got.length === 1);
    expect(c.state).toBe("open");
  });

  test("storm guard: a second 4011 in a row waits for the jittered backoff instead of coming back at once", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.99);
    const g = id("g");
    const { c, issued } = tokenClient(g);
    await c.connect();
    const states = collect(c, "state");
    for (let i = 1; i <= 3; i++) {
      await admin("/v3/disconnect", { client_id: c.client, reconnect: true, reason: `again ${i}` });
      await waitFor(() => opens(states) === i, { timeoutMs: 5000 });
    }
    const waits = states.filter((s) => s.code === 4011).map((s) => [s.reason, s.delayMs]);
    // makeClient's backoff: minDelayMs 50, maxDelayMs 300; random() = 0.99.
    expect(waits).toEqual([["again 1", 0], ["again 2", 99], ["again 3", 198]]);
    expect(issued).toHaveLength(4);
  });
});

describe("POST /v3/revoke", () => {
  test("4001 after a revocation: getToken() again and back at once", async () => {
    const g = id("g");
    let iat = nowSecs() - 60; // the first token is old
    const { c, issued } = tokenClient(g, { iat: () => iat });
    await c.connect();
    const states = collect(c, "state");
    iat = nowSecs(); // the backend's next tokens are issued after the revocation cut-off
    await admin("/v3/revoke", { sub: c.client, issued_before: nowSecs() - 30, until: nowSecs() + 3600 });
    await waitFor(() => opens(states) === 1, { timeoutMs: 5000 });
    expect(states.find((s) => s.code !== undefined)).toMatchObject({ from: "open", to: "reconnecting", code: 4001, delayMs: 0 });
    expect(issued).toHaveLength(2);
  });

  test("4001 after a revocation, getToken() still returning revoked tokens: 401, retried with backoff until a good one", async () => {
    const g = id("g");
    const old = nowSecs() - 60;
    let good = false;
    const { c, issued } = tokenClient(g, { iat: () => (good ? nowSecs() : old) });
    await c.connect();
    const states = collect(c, "state");
    const errors = collect(c, "error");
    await admin("/v3/revoke", { sub: c.client, issued_before: nowSecs() - 30, until: nowSecs() + 3600 });
    // Refused (401) again and again: each retry asks getToken() again, after a growing backoff.
    await waitFor(() => states.filter((s) => s.reason === "upgrade refused with HTTP 401").length >= 2, { timeoutMs: 10_000 });
    expect(c.state).toBe("reconnecting");
    expect(states.find((s) => s.code === 4001)).toMatchObject({ to: "reconnecting", delayMs: 0 });
    const refused = states.filter((s) => s.reason === "upgrade refused with HTTP 401");
    expect(refused.map((s) => s.attempt)).toEqual(refused.map((_, i) => i + 2)); // no open resets the count
    expect(errors).toEqual([]); // not a stop: getToken() may yet give a good token
    good = true;
    await waitFor(() => opens(states) === 1, { timeoutMs: 10_000 });
    expect(issued.length).toBeGreaterThanOrEqual(4);
  });

  test("4001 after a revocation with a static token: stops with a token error", async () => {
    const g = id("g");
    const client = id("c");
    const c = makeClient({ url: hub.url, group: g, client, token: signToken(SECRET, { sub: client, grp: g, jti: id("jti"), iat: nowSecs() - 60 }) });
    const errors = collect(c, "error");
    await c.connect();
    await admin("/v3/revoke", { sub: client, issued_before: nowSecs() - 30, until: nowSecs() + 3600 });
    await waitFor(() => c.state === "closed", { timeoutMs: 5000 });
    expect(errors[0]).toMatchObject({ code: "token", closeCode: 4001 });
  });
});
