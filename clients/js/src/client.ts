// client.ts: AetherClient: connecting (URLs, credentials, recovery positions), the state
// machine with reconnect and backoff, liveness (heartbeat + dead-connection deadline),
// the bounded send queue, acknowledgements, presence and the events.

import { Acks, type Ack } from "./acks.js";
import { backoffDelay } from "./backoff.js";
import { decideClose, decideHttpStatus, httpStatusFromError, ServiceReconnects, type CloseDecision } from "./closeCodes.js";
import { Emitter } from "./emitter.js";
import { AetherError } from "./errors.js";
import { buildFrame, controlFrame, isPlainObject, isVisionId, parseDelivery, type Body, type Message, type Target } from "./frames.js";
import { Positions, ROUTES, type Position, type RecoveredEvent, type Route } from "./recovery.js";

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** The part of the WebSocket API the client uses (browsers' WebSocket and Node's `ws` both fit). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Something with addEventListener/removeEventListener (window, document, or a test double). */
export interface EventTargetLike {
  addEventListener(type: string, fn: () => void): void;
  removeEventListener(type: string, fn: () => void): void;
}

export interface AetherClientOptions {
  /** Hub URL, or several tried in turn. http(s):// becomes ws(s)://. */
  url: string | readonly string[];
  group: string;
  client: string;
  /** Called before every connect attempt (so after a 4001 or a 4011 too); the token goes in the `aether.token.` subprotocol. */
  getToken?: () => string | Promise<string>;
  /** A static token (no refresh possible). */
  token?: string;
  /** Sent as the `api_key` query parameter. */
  apiKey?: string;
  /** Default: globalThis.WebSocket. In Node < 22 pass `ws`'s WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Backoff bounds, or false: never reconnect. */
  reconnect?: false | { minDelayMs?: number; maxDelayMs?: number };
  heartbeatIntervalMs?: number;
  /** No inbound data for this long: the connection is dead. Default heartbeatIntervalMs + 10000. */
  deadAfterMs?: number;
  connectTimeoutMs?: number;
  /** Send since_* on every connect and surface `recovered`. Default true. */
  recovery?: boolean;
  /** Sends while not open wait in this bounded queue; 0 = off (they reject). Default 16. */
  queueSize?: number;
  /**
   * Ask the hub to acknowledge every send (`ack_id`); a send then resolves with its ack. Default
   * true. false: no `ack_id`, a send resolves `{ status: "sent" }` once written to the socket.
   */
  acks?: boolean;
  /** A written send with no ack after this long settles `unconfirmed` (reason `timeout`). Default 30000. */
  ackTimeoutMs?: number;
  maxMessageBytes?: number;
  /**
   * Where `online` (window) and `visibilitychange` (document) come from. Default: the
   * global window/document when they exist. Mostly for tests and non-browser runtimes.
   */
  environment?: { window?: EventTargetLike; document?: EventTargetLike & { visibilityState?: string } };
}

export interface StateEvent {
  from: State;
  to: State;
  code?: number;
  reason?: string;
  attempt?: number;
  delayMs?: number;
  url?: string;
}

export interface PresenceEvent {
  event: "join" | "leave";
  clientId: string;
  members: ReadonlySet<string>;
}

export interface AetherEvents {
  message: Message;
  cmd: Message;
  presence: PresenceEvent;
  members: ReadonlySet<string>;
  state: StateEvent;
  recovered: RecoveredEvent;
  error: AetherError;
}

interface Queued {
  text: string;
  ackId: string | undefined;
  resolve: (ack: Ack) => void;
  reject: (e: AetherError) => void;
}

const OPEN = 1;
const PRESENCE_TIMEOUT_MS = 10000;

function num(v: unknown, name: string, def: number, min: number): number {
  if (v === undefined) return def;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min) {
    throw new AetherError("invalid_options", `${name} must be a number >= ${min}`);
  }
  return v;
}

function normaliseUrl(u: string): string {
  if (typeof u !== "string" || !/^(wss?|https?):\/\//i.test(u)) {
    throw new AetherError("invalid_options", `url must start with ws://, wss://, http:// or https://, got ${JSON.stringify(u)}`);
  }
  return u.replace(/^http/i, "ws").replace(/\/+$/, "");
}

export class AetherClient extends Emitter<AetherEvents> {
  readonly group: string;
  readonly client: string;
  private readonly urls: string[];
  private readonly opts: AetherClientOptions;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly backoff: { minDelayMs: number; maxDelayMs: number } | false;
  private readonly heartbeatMs: number;
  private readonly deadMs: number;
  private readonly connectTimeoutMs: number;
  private readonly queueSize: number;
  private readonly maxBytes: number;
  private readonly recoveryOn: boolean;
  private readonly acks: Acks | undefined;

  private _state: State = "idle";
  private _members = new Set<string>();
  private readonly recovery = new Positions();
  private ws: WebSocketLike | undefined;
  private urlIndex = 0;
  private attempt = 0;
  private everOpened = false;
  private generation = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  private deadTimer: ReturnType<typeof setTimeout> | undefined;
  private deadline = 0;
  private httpStatus: number | undefined;
  /** The 4011 storm guard: counts 4011s in a row. */
  private readonly serviceReconnects = new ServiceReconnects();
  private askedNew: Route[] = [];
  private queue: Queued[] = [];
  private presenceWaiters: Array<{ resolve: (m: string[]) => void; reject: (e: AetherError) => void; timer: ReturnType<typeof setTimeout> }> = [];
  private connectWaiters: Array<{ resolve: () => void; reject: (e: AetherError) => void }> = [];
  private envListeners: Array<() => void> = [];

  constructor(options: AetherClientOptions) {
    super();
    if (!isPlainObject(options)) throw new AetherError("invalid_options", "options must be an object");
    const urls = typeof options.url === "string" ? [options.url] : Array.isArray(options.url) ? [...(options.url as string[])] : [];
    if (urls.length === 0) throw new AetherError("invalid_options", "url is required (a string or a non-empty array)");
    this.urls = urls.map(normaliseUrl);
    if (!isVisionId(options.group)) throw new AetherError("invalid_options", "group must be a Vision ID (1-64 characters of A-Z a-z 0-9 _ -)");
    if (!isVisionId(options.client)) throw new AetherError("invalid_options", "client must be a Vision ID (1-64 characters of A-Z a-z 0-9 _ -)");
    if (options.getToken !== undefined && typeof options.getToken !== "function") throw new AetherError("invalid_options", "getToken must be a function");
    this.group = options.group;
    this.client = options.client;
    this.opts = options;
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (options.reconnect === false) this.backoff = false;
    else {
      const r = options.reconnect ?? {};
      const minDelayMs = num(r.minDelayMs, "reconnect.minDelayMs", 500, 0);
      this.backoff = { minDelayMs, maxDelayMs: num(r.maxDelayMs, "reconnect.maxDelayMs", 20000, minDelayMs) };
    }
    this.heartbeatMs = num(options.heartbeatIntervalMs, "heartbeatIntervalMs", 30000, 1);
    this.deadMs = num(options.deadAfterMs, "deadAfterMs", this.heartbeatMs + 10000, 1);
    this.connectTimeoutMs = num(options.connectTimeoutMs, "connectTimeoutMs", 10000, 1);
    this.queueSize = Math.floor(num(options.queueSize, "queueSize", 16, 0));
    this.maxBytes = num(options.maxMessageBytes, "maxMessageBytes", 65536, 64);
    this.recoveryOn = options.recovery !== false;
    const ackTimeoutMs = num(options.ackTimeoutMs, "ackTimeoutMs", 30000, 1);
    this.acks = options.acks === false ? undefined : new Acks(ackTimeoutMs);
  }

  get state(): State {
    return this._state;
  }

  /** The group's members, live: from the presence answer asked on every open, then join/leave events. */
  get members(): ReadonlySet<string> {
    return this._members;
  }

  /** The recovery position kept per route. */
  positions(): Partial<Record<Route, Position>> {
    return this.recovery.get();
  }

  /** Starts connecting. Resolves at the first open; rejects if the client stops for good first. */
  connect(): Promise<void> {
    if (this._state === "open") return Promise.resolve();
    if (this._state === "closed") return Promise.reject(new AetherError("closed", "the client was closed"));
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this._state === "idle") {
      if (!this.WS) {
        const e = new AetherError("invalid_options", "no WebSocket implementation: pass the WebSocket option (Node: ws)");
        this.stop(e);
        return p;
      }
      this.addEnvironmentListeners();
      void this.attemptConnect();
    }
    return p;
  }

  /**
   * Closes with 1000; never reconnects afterwards; queued sends reject with "closed", written
   * sends still waiting for their ack resolve `unconfirmed` (reason `closed`).
   */
  close(): void {
    if (this._state === "closed") return;
    this.stop(new AetherError("closed", "the client was closed"), 1000);
  }

  /*
   * The send helpers resolve with the hub's ack: `ok` (published) or `unconfirmed` (fate
   * unknown; never resent by the client). A `failed` ack rejects with AetherError `failed`.
   * With `acks: false` they resolve `{ status: "sent" }` once written.
   */
  sendGroup(body: Body): Promise<Ack> {
    return this.sendFrame("group", null, body);
  }
  sendDirect(to: string, body: Body): Promise<Ack> {
    return this.sendFrame("direct", to, body);
  }
  broadcast(body: Body): Promise<Ack> {
    return this.sendFrame("broadcast", null, body);
  }
  echo(body: Body): Promise<Ack> {
    return this.sendFrame("echo", null, body);
  }

  /** Asks the hub for the group's members; resolves with them sorted (timeout 10 s). */
  presence(): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.presenceWaiters = this.presenceWaiters.filter((w) => w.timer !== timer);
        reject(new AetherError("timeout", "no presence answer within 10 s"));
      }, PRESENCE_TIMEOUT_MS);
      this.presenceWaiters.push({ resolve, reject, timer });
      // When not open, the query made on every open answers it.
      if (this._state === "open" && this.ws) this.write(controlFrame("presence", this.client));
      else if (this._state === "closed" || this._state === "idle") {
        clearTimeout(timer);
        this.presenceWaiters.pop();
        reject(new AetherError(this._state === "closed" ? "closed" : "not_connected", "the client is not connected"));
      }
    });
  }

  // ---- sending ----

  private sendFrame(target: Target, to: string | null, body: Body): Promise<Ack> {
    const ackId = this.acks?.nextId();
    let text: string;
    try {
      text = buildFrame({ client: this.client, group: this.group, maxMessageBytes: this.maxBytes }, target, to, body, ackId);
    } catch (e) {
      return Promise.reject(e instanceof AetherError ? e : new AetherError("invalid_message", String(e)));
    }
    if (this._state === "open" && this.ws && this.checkAlive()) {
      return new Promise<Ack>((resolve, reject) => this.writeSend({ text, ackId, resolve, reject }));
    }
    if (this._state === "closed") return Promise.reject(new AetherError("closed", "the client was closed"));
    if (this.queueSize === 0) return Promise.reject(new AetherError("not_connected", "not connected and the send queue is off"));
    if (this.queue.length >= this.queueSize) {
      return Promise.reject(new AetherError("queue_full", `not connected and the send queue is full (${this.queueSize})`));
    }
    return new Promise<Ack>((resolve, reject) => this.queue.push({ text, ackId, resolve, reject }));
  }

  private write(text: string): void {
    this.ws?.send(text);
  }

  /** Writes a send; from then on it waits for its ack (acks off: resolved now). */
  private writeSend(item: Queued): void {
    try {
      this.write(item.text);
    } catch (e) {
      item.reject(new AetherError("not_connected", String(e)));
      return;
    }
    if (item.ackId === undefined || !this.acks) item.resolve({ status: "sent" });
    else this.acks.wait(item.ackId, item.resolve, item.reject);
  }

  private flushQueue(): void {
    const q = this.queue;
    this.queue = [];
    for (const item of q) this.writeSend(item);
  }

  // ---- connecting ----

  private setState(to: State, extra: Omit<StateEvent, "from" | "to"> = {}): void {
    const from = this._state;
    if (from === to && to !== "reconnecting" && to !== "connecting") return;
    this._state = to;
    this.emit("state", { from, to, ...extra });
  }

  private buildUrl(base: string): string {
    const params: Array<[string, string]> = [];
    if (this.opts.apiKey !== undefined) params.push(["api_key", this.opts.apiKey]);
    this.askedNew = [];
    if (this.recoveryOn) {
      for (const [k, v] of this.recovery.sinceParams()) {
        params.push([k, v]);
        if (v === "new") this.askedNew.push(k.slice(6) as Route);
      }
    }
    const qs = params.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
    return `${base}/v3/ws/group/${this.group}/client/${this.client}${qs ? "?" + qs : ""}`;
  }

  private async attemptConnect(): Promise<void> {
    const gen = ++this.generation;
    const base = this.urls[this.urlIndex % this.urls.length]!;
    this.setState(this.everOpened ? "reconnecting" : "connecting", { attempt: this.attempt, url: base });
    let token = this.opts.token;
    const opts = this.opts;
    if (opts.getToken) {
      let tokenTimer: ReturnType<typeof setTimeout> | undefined;
      try {
        // A getToken() that never settles must not stall reconnecting forever.
        token = await Promise.race([
          Promise.resolve().then(() => opts.getToken!()),
          new Promise<never>((_, reject) => {
            tokenTimer = setTimeout(() => reject(new Error(`no token within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
          }),
        ]);
      } catch (e) {
        clearTimeout(tokenTimer);
        if (gen !== this.generation) return;
        this.emit("error", new AetherError("token", `getToken() failed: ${(e as Error)?.message ?? String(e)}`));
        this.scheduleReconnect({ action: "reconnect" }, 1006, "getToken() failed");
        return;
      }
      clearTimeout(tokenTimer);
      if (gen !== this.generation) return;
    }
    const protocols = ["aether.v3"];
    if (typeof token === "string" && token !== "") protocols.push("aether.token." + token);
    let ws: WebSocketLike;
    try {
      ws = new this.WS!(this.buildUrl(base), protocols);
    } catch (e) {
      this.stop(new AetherError("invalid_options", `cannot open a WebSocket: ${(e as Error)?.message ?? String(e)}`));
      return;
    }
    this.ws = ws;
    this.httpStatus = undefined;
    this.connectTimer = setTimeout(() => {
      if (this.ws !== ws) return;
      this.dropSocket();
      this.handleClose(1006, "connect timeout");
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.connectTimer);
      this.onOpen();
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.ws === ws) this.onMessage(ev.data);
    };
    ws.onerror = (ev: unknown) => {
      if (this.ws !== ws) return;
      const status = httpStatusFromError(ev);
      if (status !== undefined) this.httpStatus = status;
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (this.ws !== ws) return;
      this.dropSocket();
      this.handleClose(typeof ev?.code === "number" ? ev.code : 1006, typeof ev?.reason === "string" ? ev.reason : "");
    };
  }

  private onOpen(): void {
    const reconnected = this.everOpened;
    this.everOpened = true;
    this.attempt = 0;
    this.armDeadline();
    this.scheduleHeartbeat();
    this.setState("open");
    this.pendingRecovered = reconnected && this.recoveryOn;
    this.write(controlFrame("presence", this.client));
    this.flushQueue();
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private pendingRecovered = false;

  /**
   * Detaches and closes the current socket and its timers; no handler of it runs afterwards.
   * Sends written on it and still waiting settle `unconfirmed`: their ack cannot come now.
   */
  private dropSocket(code?: number, reason?: string): void {
    const ws = this.ws;
    this.ws = undefined;
    this.acks?.dropAll("disconnected");
    clearTimeout(this.connectTimer);
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.deadTimer);
    this.heartbeatTimer = undefined;
    this.deadTimer = undefined;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Keep a no-op error handler: some implementations throw on an unhandled error event.
    ws.onerror = () => {};
    try {
      if (ws.readyState <= OPEN) ws.close(code, reason);
    } catch {
      /* already closing */
    }
  }

  private handleClose(code: number, reason: string): void {
    if (this._state === "closed") return;
    const canRefresh = this.opts.getToken !== undefined;
    let decision: CloseDecision;
    if (this.httpStatus !== undefined) {
      decision = decideHttpStatus(this.httpStatus, canRefresh);
      reason = reason || `upgrade refused with HTTP ${this.httpStatus}`;
    } else decision = decideClose(code, canRefresh, code === 4011 ? this.serviceReconnects.note(Date.now()) : 1);
    if (decision.action === "stop") {
      const status = this.httpStatus;
      const e =
        status !== undefined
          ? new AetherError(decision.error, `the hub refused the connection: HTTP ${status}`, status)
          : decision.error === "disconnected_by_service"
            ? new AetherError(decision.error, `the service disconnected this client: ${code}${reason ? " " + reason : ""}`, code, reason)
            : new AetherError(decision.error, `the hub closed the connection: ${code}${reason ? " " + reason : ""}`, code);
      this.stop(e, undefined, code, reason);
      return;
    }
    this.scheduleReconnect(decision, code, reason);
  }

  private scheduleReconnect(decision: CloseDecision & { action: "reconnect" }, code: number, reason: string): void {
    if (this.backoff === false) {
      this.stop(new AetherError("not_connected", `the connection closed (${code}${reason ? " " + reason : ""}) and reconnect is off`, code), undefined, code, reason);
      return;
    }
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    let delayMs = decision.immediate ? 0 : backoffDelay(Math.max(this.attempt, decision.minAttempt ?? 0), this.backoff);
    if (decision.minDelayMs !== undefined) delayMs = Math.max(delayMs, decision.minDelayMs);
    this.attempt++;
    this.setState("reconnecting", { code, reason, attempt: this.attempt, delayMs });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.attemptConnect();
    }, delayMs);
  }

  /** Stops for good: no reconnect; pending work rejects with `error`. */
  private stop(error: AetherError, closeCode?: number, code?: number, reason?: string): void {
    this.generation++;
    this.acks?.dropAll("closed");
    clearTimeout(this.timer);
    this.timer = undefined;
    this.dropSocket(closeCode, closeCode === 1000 ? "client closed" : undefined);
    this.removeEnvironmentListeners();
    const q = this.queue;
    this.queue = [];
    const rejectWith = error.code === "closed" ? error : new AetherError("closed", error.message, error.closeCode);
    for (const item of q) item.reject(rejectWith);
    for (const w of this.presenceWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(rejectWith);
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    this.setState("closed", code !== undefined ? { code, reason } : {});
    if (error.code !== "closed") this.emit("error", error);
    for (const w of waiters) w.reject(error);
  }

  // ---- liveness ----

  /** Any inbound data moves the deadline; the one timer re-arms itself from it when it fires. */
  private armDeadline(): void {
    this.deadline = Date.now() + this.deadMs;
    this.deadTimer ??= setTimeout(() => {
      this.deadTimer = undefined;
      this.checkAlive();
    }, this.deadMs + 5);
  }

  /** Checks the dead deadline against the clock (timers may have been throttled); reconnects when past. */
  private checkAlive(): boolean {
    if (this._state !== "open" || !this.ws) return false;
    if (Date.now() < this.deadline) {
      this.deadTimer ??= setTimeout(() => {
        this.deadTimer = undefined;
        this.checkAlive();
      }, this.deadline - Date.now() + 5);
      return true;
    }
    this.dropSocket(1000, "no data from the hub");
    this.handleClose(1006, "dead connection: no data from the hub");
    return false;
  }

  private heartbeat(): void {
    if (this.checkAlive()) this.write(controlFrame("heartbeat", this.client));
  }

  /**
   * The next heartbeat is armed when the hub answers the last one (and on open), not by
   * setInterval: Chrome runs a hidden tab's repeating timers once a minute, which would let
   * the dead deadline pass between two heartbeats of a quiet but healthy connection. A
   * timeout set from a message handler starts a new timer chain and is not held back.
   */
  private scheduleHeartbeat(): void {
    clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => this.heartbeat(), this.heartbeatMs);
  }

  private addEnvironmentListeners(): void {
    const env = this.opts.environment ?? {
      window: (globalThis as { window?: EventTargetLike }).window,
      document: (globalThis as { document?: EventTargetLike & { visibilityState?: string } }).document,
    };
    const wake = () => {
      if (this._state === "reconnecting" && this.timer !== undefined) {
        clearTimeout(this.timer);
        this.timer = undefined;
        void this.attemptConnect();
      } else if (this._state === "open") this.heartbeat();
    };
    const win = env.window;
    if (win && typeof win.addEventListener === "function") {
      win.addEventListener("online", wake);
      this.envListeners.push(() => win.removeEventListener("online", wake));
    }
    const doc = env.document;
    if (doc && typeof doc.addEventListener === "function") {
      const onVisibility = () => {
        if (doc.visibilityState === undefined || doc.visibilityState === "visible") wake();
      };
      doc.addEventListener("visibilitychange", onVisibility);
      this.envListeners.push(() => doc.removeEventListener("visibilitychange", onVisibility));
    }
  }

  private removeEnvironmentListeners(): void {
    for (const remove of this.envListeners.splice(0)) remove();
  }

  // ---- receiving ----

  private onMessage(data: unknown): void {
    this.armDeadline();
    const m = parseDelivery(data);
    if (!m) return;
    switch (m.msg_type) {
      case "msg":
      case "cmd":
        if (this.recoveryOn && !this.recovery.accept(m)) return; // duplicate
        this.emit(m.msg_type === "cmd" ? "cmd" : "message", m);
        return;
      case "presence":
        this.onPresence(m);
        return;
      case "recovery":
        this.onRecovery(m);
        return;
      case "heartbeat":
        this.scheduleHeartbeat();
        return;
      case "ack":
        this.acks?.settle(m.payload);
        return;
      default:
        return;
    }
  }

  private onPresence(m: Message): void {
    const p = m.payload;
    if (Array.isArray(p.members)) {
      const list = (p.members as unknown[]).filter((x): x is string => typeof x === "string").sort();
      const changed = list.length !== this._members.size || list.some((x) => !this._members.has(x));
      this._members = new Set(list);
      for (const w of this.presenceWaiters.splice(0)) {
        clearTimeout(w.timer);
        w.resolve([...list]);
      }
      if (changed) this.emit("members", this._members);
      return;
    }
    const event = p.event;
    const clientId = typeof p.client_id === "string" ? p.client_id : m.from_id;
    if ((event !== "join" && event !== "leave") || typeof clientId !== "string") return;
    const had = this._members.has(clientId);
    const next = new Set(this._members);
    if (event === "join") next.add(clientId);
    else next.delete(clientId);
    this._members = next;
    this.emit("presence", { event, clientId, members: next });
    if (had !== next.has(clientId)) this.emit("members", next);
  }

  private onRecovery(m: Message): void {
    const routes = this.recovery.applySummary(m.payload);
    if (!this.pendingRecovered) return;
    this.pendingRecovered = false;
    // A route asked as `new` on a reconnect had no position: what it missed is unknown.
    for (const r of this.askedNew) {
      const s = routes[r];
      if (s) routes[r] = { ...s, recovered: false };
    }
    const recovered = ROUTES.every((r) => routes[r] === undefined || routes[r].recovered);
    this.emit("recovered", { recovered, routes });
  }
}
