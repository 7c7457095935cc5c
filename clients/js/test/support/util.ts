// test/support/util.ts: helpers for the client tests: HS256 tokens, a client factory
// with `ws`, and collecting events.
import { createHmac } from "node:crypto";
import { WebSocket } from "ws";
import { AetherClient, type AetherClientOptions, type AetherEvents } from "../../src/index.js";

export function signToken(secret: string, claims: { sub: string; grp: string | string[]; exp?: number; [k: string]: unknown }): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = { aud: "aether-hub", exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

const made: AetherClient[] = [];

/** A client using `ws`, with fast reconnects; closed by closeAll(). */
export function makeClient(opts: Partial<AetherClientOptions> & Pick<AetherClientOptions, "url" | "group" | "client">): AetherClient {
  const c = new AetherClient({
    WebSocket,
    reconnect: { minDelayMs: 50, maxDelayMs: 300 },
    ...opts,
  });
  made.push(c);
  return c;
}

/** Two clients of a fresh group, both open. */
export async function connectedPair(url: string): Promise<[AetherClient, AetherClient]> {
  const g = id("g");
  const pair: [AetherClient, AetherClient] = [makeClient({ url, group: g, client: id("a") }), makeClient({ url, group: g, client: id("b") })];
  await Promise.all(pair.map((c) => c.connect()));
  return pair;
}

export function closeAll(): void {
  for (const c of made.splice(0)) c.close();
}

/** Collects every value of one event. */
export function collect<K extends keyof AetherEvents>(c: AetherClient, event: K): AetherEvents[K][] {
  const out: AetherEvents[K][] = [];
  c.on(event, (v) => out.push(v));
  return out;
}

let n = 0;
/** A fresh Vision ID. */
export function id(prefix: string): string {
  return `${prefix}-${process.pid}-${++n}-${Math.random().toString(36).slice(2, 8)}`;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
