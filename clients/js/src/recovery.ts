// recovery.ts: recovery positions (docs/protocol.md section 9): epoch + highest offset per route,
// the since_* query parameters, duplicate detection by offset, and reading the hub's summary.

import type { Message } from "./frames.js";

export type Route = "client" | "group" | "broadcast";
export const ROUTES: readonly Route[] = ["client", "group", "broadcast"];

export interface Position {
  epoch: string;
  offset: number;
}

export interface RouteSummary {
  recovered: boolean;
  missed: number;
  epoch: string;
  offset: number;
}

export interface RecoveredEvent {
  /** true when every route recovered: nothing was lost. false: re-read your state. */
  recovered: boolean;
  routes: Partial<Record<Route, RouteSummary>>;
}

/** The route a delivered message belongs to, from its target. */
export function routeOf(target: string): Route | undefined {
  return target === "direct" ? "client" : target === "group" ? "group" : target === "broadcast" ? "broadcast" : undefined;
}

export class Positions {
  private readonly pos: Partial<Record<Route, Position>> = {};

  get(): Partial<Record<Route, Position>> {
    const out: Partial<Record<Route, Position>> = {};
    for (const r of ROUTES) {
      const p = this.pos[r];
      if (p) out[r] = { ...p };
    }
    return out;
  }

  has(route: Route): boolean {
    const p = this.pos[route];
    return p !== undefined && p.epoch !== "";
  }

  /** The since_* query parameters: `EPOCH:OFFSET`, or `new` for a route without a position. */
  sinceParams(): Array<[string, string]> {
    return ROUTES.map((r) => {
      const p = this.pos[r];
      return ["since_" + r, p && p.epoch ? `${p.epoch}:${p.offset}` : "new"];
    });
  }

  /**
   * Records a delivered message's position. Returns false when it is a duplicate
   * (same epoch, offset not above the highest seen), which the client then drops.
   */
  accept(m: Message): boolean {
    const route = routeOf(m.target);
    if (!route || typeof m.offset !== "number" || typeof m.epoch !== "string") return true;
    const p = this.pos[route];
    if (p && p.epoch === m.epoch && m.offset <= p.offset) return false;
    this.pos[route] = { epoch: m.epoch, offset: m.offset };
    return true;
  }

  /** Applies a `recovery` summary's payload; returns the per-route entries it held. */
  applySummary(payload: Record<string, unknown>): Partial<Record<Route, RouteSummary>> {
    const routes: Partial<Record<Route, RouteSummary>> = {};
    for (const r of ROUTES) {
      const e = payload[r] as Partial<RouteSummary> | undefined;
      if (!e || typeof e !== "object") continue;
      const s: RouteSummary = {
        recovered: e.recovered === true,
        missed: typeof e.missed === "number" ? e.missed : 0,
        epoch: typeof e.epoch === "string" ? e.epoch : "",
        offset: typeof e.offset === "number" ? e.offset : 0,
      };
      routes[r] = s;
      const p = this.pos[r];
      // The summary's position covers everything up to it (sent or not meant for us).
      if (!p || p.epoch !== s.epoch || p.offset < s.offset) this.pos[r] = { epoch: s.epoch, offset: s.offset };
    }
    return routes;
  }
}
