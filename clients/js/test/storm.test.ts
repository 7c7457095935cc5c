// A reconnect storm against a real hub with an accept-rate limit (AETHER_MAX_CONNECTS_PER_SEC,
// issue 22): upgrades over the rate are refused with 503, which a browser only sees as close
// 1006. Every client still gets in; its retries follow the full-jitter backoff, spread across
// clients; the attempt counter keeps growing across refused upgrades and only an open resets
// it. Half the clients see the refusal as Node's `ws` reports it (HTTP 503), half as a browser
// does (1006, no status).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { WebSocket } from "ws";
import type { StateEvent, WebSocketLike } from "../src/index.js";
import { startHub, waitFor, type Hub } from "./support/hub.js";
import { startProxy, type Proxy } from "./support/proxy.js";
import { closeAll, id, makeClient } from "./support/util.js";

/**
 * `ws` as a browser shows it: the error event of a refused upgrade says nothing (no HTTP
 * status), and the close that follows is 1006.
 */
class BrowserLikeSocket implements WebSocketLike {
  private readonly ws: WebSocket;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(url: string, protocols?: string | string[]) {
    this.ws = new WebSocket(url, protocols);
    this.ws.onopen = (ev) => this.onopen?.(ev);
    this.ws.onmessage = (ev) => this.onmessage?.({ data: ev.data });
    this.ws.onclose = (ev) => this.onclose?.({ code: ev.code, reason: ev.reason });
    this.ws.onerror = () => this.onerror?.({ type: "error" });
  }
  get readyState(): number {
    return this.ws.readyState;
  }
  send(data: string): void {
    this.ws.send(data);
  }
  close(code?: number, reason?: string): void {
    this.ws.close(code, reason);
  }
}

const RATE = 10;
const CLIENTS = 40;
const MIN_DELAY = 400;

let hub: Hub;
const extra: Array<Hub | Proxy> = [];

beforeAll(async () => {
  hub = await startHub({ env: { AETHER_MAX_CONNECTS_PER_SEC: String(RATE) } });
});
afterEach(() => closeAll());
afterAll(async () => {
  closeAll();
  await Promise.all(extra.map((x) => ("cut" in x ? x.close() : x.stop())));
  await hub?.stop();
});

async function refusedByRate(): Promise<number> {
  const text = await (await fetch(hub.httpUrl + "/metrics")).text();
  const m = /^aether_upgrades_refused_total\{reason="rate"\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

/** Waits for the bucket to be full again (the hub refills it at RATE a second). */
const refill = () => new Promise((r) => setTimeout(r, 1000 + 1000 / RATE));

interface Timed extends StateEvent {
  at: number;
}

describe("a reconnect storm against AETHER_MAX_CONNECTS_PER_SEC", () => {
  test("every client gets in; refused ones retry with spread full-jitter delays and a growing attempt", async () => {
    await refill();
    const refusedBefore = await refusedByRate();
    const group = id("g");
    const clients = Array.from({ length: CLIENTS }, (_, i) => {
      const c = makeClient({
        url: hub.url,
        group,
        client: id("c"),
        reconnect: { minDelayMs: MIN_DELAY, maxDelayMs: 5000 },
        ...(i % 2 === 1 ? { WebSocket: BrowserLikeSocket } : {}),
      });
      const states: Timed[] = [];
      c.on("state", (s) => states.push({ ...s, at: Date.now() }));
      return { c, states, browser: i % 2 === 1 };
    });
    const started = Date.now();
    await Promise.all(clients.map(({ c }) => c.connect()));
    const tookMs = Date.now() - started;

    // The hub refused most of the first wave: a burst of RATE got in.
    const refused = (await refusedByRate()) - refusedBefore;
    expect(refused).toBeGreaterThanOrEqual(CLIENTS - RATE - 5);
    // At RATE a second, the rest needed about (CLIENTS - RATE) / RATE seconds.
    expect(tookMs).toBeGreaterThanOrEqual(((CLIENTS - RATE) / RATE) * 1000 * 0.7);

    const firstRetries: number[] = [];
    let laterDelays = 0;
    for (const { states, browser } of clients) {
      const waits = states.filter((s) => s.to === "reconnecting");
      // Attempts grow by one per refused upgrade: nothing before the open resets them.
      expect(waits.map((s) => s.attempt)).toEqual(waits.map((_, i) => i + 1));
      for (const w of waits) {
        // Node's ws shows the 503; a browser only a 1006.
        expect(w.code).toBe(1006);
        if (browser) expect(w.reason).toBe("");
        else expect(w.reason).toMatch(/HTTP 503/);
        // Full jitter: random(0, min · 2^(attempt - 1)), never an immediate retry by rule.
        expect(w.delayMs).toBeLessThan(MIN_DELAY * 2 ** (w.attempt! - 1));
        if (w.attempt! >= 2 && w.delayMs! >= MIN_DELAY) laterDelays++;
      }
      expect(states.at(-1)!.to).toBe("open");
      if (waits.length > 0) {
        // When the first retry actually started, from the start of the storm.
        const retry = states.find((s) => s.to === "connecting" && s.attempt === 1)!;
        firstRetries.push(retry.at - started);
      }
    }
    // Some clients were refused more than once, and their waits grew past the first cap.
    expect(Math.max(...clients.map(({ states }) => Math.max(0, ...states.map((s) => s.attempt ?? 0))))).toBeGreaterThanOrEqual(2);
    expect(laterDelays).toBeGreaterThan(0);

    // The first retries are spread over the first backoff window, not a single spike:
    // no 50 ms slot holds more than a third of them, and they span most of the window.
    expect(firstRetries.length).toBeGreaterThanOrEqual(CLIENTS - RATE - 5);
    const slots = new Map<number, number>();
    for (const t of firstRetries) slots.set(Math.floor(t / 50), (slots.get(Math.floor(t / 50)) ?? 0) + 1);
    expect(Math.max(...slots.values())).toBeLessThanOrEqual(firstRetries.length / 3);
    expect(Math.max(...firstRetries) - Math.min(...firstRetries)).toBeGreaterThan(MIN_DELAY / 2);
  }, 60_000);

  test("a refused upgrade does not reset the backoff; an open does", async () => {
    // One upgrade a second: once a first client has taken it, the next is refused for a second.
    const slow = await startHub({ env: { AETHER_MAX_CONNECTS_PER_SEC: "1" } });
    extra.push(slow);
    const proxy = await startProxy({ host: "127.0.0.1", port: slow.port });
    extra.push(proxy);
    await refill();
    await makeClient({ url: slow.url, group: id("g"), client: id("first") }).connect();
    const c = makeClient({ url: proxy.url, group: id("g"), client: id("c"), reconnect: { minDelayMs: 50, maxDelayMs: 5000 } });
    const states: StateEvent[] = [];
    c.on("state", (s) => states.push(s));
    await c.connect();
    const beforeOpen = states.filter((s) => s.to === "reconnecting").map((s) => s.attempt);
    expect(beforeOpen.length).toBeGreaterThanOrEqual(1);
    expect(beforeOpen).toEqual(beforeOpen.map((_, i) => i + 1));

    // A lost connection after an open starts the count again.
    await refill();
    const seen = states.length;
    proxy.cut();
    await waitFor(() => states.slice(seen).some((s) => s.to === "open"), { timeoutMs: 10_000 });
    expect(states.slice(seen).find((s) => s.to === "reconnecting")?.attempt).toBe(1);
  }, 30_000);
});
