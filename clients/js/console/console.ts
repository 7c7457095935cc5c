// The aether-hub web console: join a group as some client, watch members
// and messages live, send msg/cmd frames and see each one's ack. Plain DOM;
// everything rendered from the hub or the user goes through textContent,
// never innerHTML.
//
// Settings can come from the query string, so two tabs open quickly:
// /console?group=g1&client=worker-1&autoconnect=1 (also hub, target, to,
// api_key and token; the last two end up in the browser history, so prefer
// typing them). The Operator tab (operator.ts) calls the hub's server API.

import { AetherClient } from "./aether-hub-client.js";
import { $, el } from "./dom.js";
import { setupOperator } from "./operator.js";

type Client = InstanceType<typeof AetherClient>;

/** What a send resolves with: the hub's acknowledgement. */
type Ack = Awaited<ReturnType<Client["sendGroup"]>>;

/** The fields of a delivered message, in the order they are shown. */
const FIELDS = [
  "msg_type",
  "target",
  "from_id",
  "to_id",
  "group_id",
  "cmd",
  "msg",
  "payload",
  "sent_at",
  "offset",
  "epoch",
  "version",
] as const;

type Shown = { readonly [K in (typeof FIELDS)[number]]?: unknown };

interface StateChange {
  from: string;
  to: string;
  code?: number;
  reason?: string;
  attempt?: number;
  delayMs?: number;
  url?: string;
}

interface RouteSummary {
  recovered: boolean;
  missed: number;
  epoch: string;
  offset: number;
}

interface Recovery {
  recovered: boolean;
  routes: { readonly [route: string]: RouteSummary | undefined };
}

type Failure = Error & { code?: string; closeCode?: number; reason?: string };

type Body = { msg?: string; cmd?: string; payload?: Record<string, unknown> };

/** Entries kept in the log; older ones are dropped. */
const LOG_LIMIT = 1000;

const connectForm = $<HTMLFormElement>("#connect-form");
const sendForm = $<HTMLFormElement>("#send-form");
const disconnectButton = $<HTMLButtonElement>("#disconnect");
const connectButton = $<HTMLButtonElement>('[data-testid="connect"]');
const sendButton = $<HTMLButtonElement>('[data-testid="send"]');
const stateBadge = $<HTMLElement>('[data-testid="state"]');
const stateDetail = $<HTMLElement>('[data-testid="state-detail"]');
const reconnectCount = $<HTMLElement>('[data-testid="reconnects"]');
const recoveryCount = $<HTMLElement>('[data-testid="recoveries"]');
const membersList = $<HTMLUListElement>("#members");
const memberCount = $<HTMLElement>('[data-testid="member-count"]');
const log = $<HTMLOListElement>("#log");

function input(form: HTMLFormElement, name: string): HTMLInputElement {
  return form.elements.namedItem(name) as HTMLInputElement;
}

function select(form: HTMLFormElement, name: string): HTMLSelectElement {
  return form.elements.namedItem(name) as HTMLSelectElement;
}

const hubInput = input(connectForm, "hub");
const groupInput = input(connectForm, "group");
const clientInput = input(connectForm, "client");
const apiKeyInput = input(connectForm, "apiKey");
const tokenInput = input(connectForm, "token");
const kindSelect = select(sendForm, "kind");
const cmdInput = input(sendForm, "cmd");
const msgInput = input(sendForm, "msg");
const payloadInput = sendForm.elements.namedItem("payload") as HTMLTextAreaElement;
const targetSelect = select(sendForm, "target");
const toInput = input(sendForm, "to");

let client: Client | null = null;
let everOpened = false;
let reconnects = 0;
let recoveries = 0;

// ---- rendering helpers --------------------------------------------------

function clock(): string {
  return new Date().toISOString().slice(11, 23);
}

function show(value: unknown): string {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** Appends one entry to the log, keeping the view at the bottom if it was. */
function addEntry(
  kind: string,
  summary: string,
  fields: [string, unknown][] = [],
  data: Record<string, string> = {},
): HTMLLIElement {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const entry = el("li", `entry kind-${kind}`);
  entry.dataset.testid = "log-entry";
  entry.dataset.kind = kind;
  Object.assign(entry.dataset, data);
  const head = el("div", "entry-head");
  head.append(el("time", "", clock()), el("span", "tag", kind), el("span", "summary", summary));
  entry.append(head);
  if (fields.length > 0) {
    const list = el("dl", "msg-fields");
    for (const [name, value] of fields) {
      const text = value === null ? "null" : show(value);
      // Long values (times, payloads, route summaries) get a whole row.
      const pair = el("div", text.length > 22 || name === "payload" ? "wide" : "");
      const dd = el("dd", value === null ? "null" : "", text);
      dd.dataset.field = name;
      pair.append(el("dt", "", name), dd);
      list.append(pair);
    }
    entry.append(list);
  }
  log.append(entry);
  while (log.childElementCount > LOG_LIMIT) log.firstElementChild?.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
  return entry;
}

function messageFields(m: Shown): [string, unknown][] {
  const fields: [string, unknown][] = FIELDS.filter((f) => f in m).map((f) => [f, m[f]]);
  // Anything beyond the known fields too: the log shows every field.
  for (const [name, value] of Object.entries(m)) {
    if (!(FIELDS as readonly string[]).includes(name)) fields.push([name, value]);
  }
  return fields;
}

function logMessage(m: Shown): void {
  const kind = show(m.msg_type) || "msg";
  const to = m.target === "direct" ? show(m.to_id) : show(m.target);
  const what = kind === "cmd" ? show(m.cmd) : show(m.msg);
  addEntry(kind, `${show(m.from_id)} → ${to}${what ? `: ${what}` : ""}`, messageFields(m));
}

function logError(error: unknown): void {
  const e = error as Failure;
  const code = e.code ?? "error";
  const fields: [string, unknown][] = [
    ["code", code],
    ["message", e.message ?? String(error)],
  ];
  if (e.closeCode !== undefined) fields.push(["closeCode", e.closeCode]);
  addEntry("error", `${code}: ${e.message ?? String(error)}`, fields);
}

// ---- connection state -----------------------------------------------------

function setState(state: string, detail = ""): void {
  stateBadge.textContent = state;
  stateBadge.dataset.state = state;
  stateDetail.textContent = detail;
  const active = client !== null && state !== "closed";
  connectButton.disabled = active;
  disconnectButton.disabled = !active;
  sendButton.disabled = !active;
}

/** The URL of the latest attempt (given when connecting starts). */
let lastUrl = "";

function describe(e: StateChange): string {
  const parts: string[] = [];
  if (e.url) lastUrl = e.url;
  if (e.code !== undefined) parts.push(`closed ${e.code}${e.reason ? ` ${e.reason}` : ""}`);
  // A browser sees a refused upgrade (401, 403, 400) as 1006 and nothing more.
  if (e.code === 1006 && !everOpened) parts.push("unreachable or refused: check the URL, group, client and credentials");
  if (e.attempt !== undefined) parts.push(`attempt ${e.attempt}`);
  if (e.delayMs !== undefined) parts.push(`next in ${(e.delayMs / 1000).toFixed(1)} s`);
  if (e.to === "open" && lastUrl) parts.push(`on ${lastUrl}`);
  return parts.join(", ");
}

function onState(e: StateChange): void {
  if (e.to === "open") {
    if (everOpened) reconnects += 1;
    everOpened = true;
    reconnectCount.textContent = String(reconnects);
  }
  const detail = describe(e);
  setState(e.to, detail);
  // The summary says it all: no field list for state changes.
  addEntry("state", `${e.from} → ${e.to}${detail ? ` (${detail})` : ""}`, [], { to: e.to });
}

function onRecovered(r: Recovery): void {
  recoveries += 1;
  recoveryCount.textContent = String(recoveries);
  const fields: [string, unknown][] = [["recovered", r.recovered]];
  for (const [route, s] of Object.entries(r.routes)) {
    if (!s) continue;
    fields.push([
      route,
      `recovered ${s.recovered}, missed ${s.missed}, epoch ${s.epoch || "-"}, offset ${s.offset}`,
    ]);
  }
  const summary = r.recovered
    ? "recovered: true (nothing lost)"
    : "recovered: false (messages were lost: re-read your state)";
  addEntry("recovery", summary, fields, { recovered: String(r.recovered) });
}

function renderMembers(members: ReadonlySet<string>): void {
  const me = clientInput.value.trim();
  const items = [...members].sort().map((id) => {
    const item = el("li");
    const button = el("button", "member", id);
    button.type = "button";
    button.dataset.testid = "member";
    button.dataset.client = id;
    button.title = `send to ${id} directly`;
    if (id === me) button.append(el("span", "muted", " (you)"));
    button.addEventListener("click", () => {
      targetSelect.value = "direct";
      toInput.value = id;
      syncSendForm();
      msgInput.focus();
    });
    item.append(button);
    return item;
  });
  membersList.replaceChildren(...items);
  memberCount.textContent = members.size > 0 ? `(${members.size})` : "";
}

// ---- connect / disconnect ----------------------------------------------

function connect(): void {
  disconnect(false);
  const options: ConstructorParameters<typeof AetherClient>[0] = {
    url: hubInput.value.trim() || defaultHub(),
    group: groupInput.value.trim(),
    client: clientInput.value.trim(),
  };
  if (apiKeyInput.value) options.apiKey = apiKeyInput.value;
  if (tokenInput.value) options.token = tokenInput.value;
  let c: Client;
  try {
    c = new AetherClient(options);
  } catch (error) {
    logError(error);
    return;
  }
  client = c;
  everOpened = false;
  reconnects = 0;
  recoveries = 0;
  reconnectCount.textContent = "0";
  recoveryCount.textContent = "0";
  const mine =
    <A extends unknown[]>(fn: (...args: A) => void) =>
    (...args: A): void => {
      if (client === c) fn(...args);
    };
  c.on("state", mine(onState));
  c.on("members", mine(renderMembers));
  c.on("message", mine(logMessage));
  c.on("cmd", mine(logMessage));
  c.on(
    "presence",
    mine((e: { event: string; clientId: string }) =>
      addEntry("presence", `${e.event} ${e.clientId}`, [
        ["event", e.event],
        ["client_id", e.clientId],
      ]),
    ),
  );
  c.on("recovered", mine(onRecovered));
  c.on("error", mine(logError));
  rememberInUrl();
  setState(c.state);
  c.connect().catch(mine(logError));
}

function disconnect(byUser: boolean): void {
  const c = client;
  if (!c) return;
  client = null;
  c.close();
  renderMembers(new Set());
  setState("closed", byUser ? "disconnected" : "");
  if (byUser) addEntry("state", "disconnected by you");
}

function defaultHub(): string {
  return location.origin.replace(/^http/, "ws");
}

/** Keeps the non-secret settings in the address, so a reload rejoins. */
function rememberInUrl(): void {
  const q = new URLSearchParams(location.search);
  q.set("group", groupInput.value.trim());
  q.set("client", clientInput.value.trim());
  if (hubInput.value.trim() && hubInput.value.trim() !== defaultHub()) {
    q.set("hub", hubInput.value.trim());
  }
  q.delete("api_key");
  q.delete("token");
  history.replaceState(null, "", `${location.pathname}?${q.toString()}`);
}

// ---- sending ------------------------------------------------------------

function syncSendForm(): void {
  cmdInput.disabled = kindSelect.value !== "cmd";
  toInput.disabled = targetSelect.value !== "direct";
}

function parsePayload(text: string): Record<string, unknown> {
  if (text.trim() === "") return {};
  const value: unknown = JSON.parse(text);
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("must be a JSON object, such as {}");
  }
  return value as Record<string, unknown>;
}

function send(): void {
  const c = client;
  if (!c) return;
  const body: Body = {};
  try {
    body.payload = parsePayload(payloadInput.value);
  } catch (error) {
    logError(Object.assign(new Error(`payload: ${(error as Error).message}`), { code: "invalid_payload" }));
    return;
  }
  if (kindSelect.value === "cmd") {
    const name = cmdInput.value.trim();
    if (!name) {
      logError(Object.assign(new Error("a cmd needs a command name"), { code: "invalid_message" }));
      return;
    }
    body.cmd = name;
  }
  if (msgInput.value !== "") body.msg = msgInput.value;
  const target = targetSelect.value;
  const to = toInput.value.trim();
  let sent: Promise<Ack>;
  switch (target) {
    case "direct":
      sent = c.sendDirect(to, body);
      break;
    case "broadcast":
      sent = c.broadcast(body);
      break;
    case "echo":
      sent = c.echo(body);
      break;
    default:
      sent = c.sendGroup(body);
  }
  const where = target === "direct" ? `direct ${to}` : target;
  const what = body.cmd ?? body.msg ?? "";
  const fields: [string, unknown][] = [
    ["target", target],
    ["msg_type", body.cmd ? "cmd" : "msg"],
  ];
  if (target === "direct") fields.push(["to_id", to]);
  if (body.cmd) fields.push(["cmd", body.cmd]);
  if (body.msg !== undefined) fields.push(["msg", body.msg]);
  fields.push(["payload", body.payload]);
  // The entry is written when the send settles: with the hub's ack (ok, or unconfirmed:
  // its fate is unknown) or its `failed` answer. Any other error was not sent at all.
  sent.then(
    (ack) => logSent(where, what, fields, ack),
    (error: unknown) => {
      const e = error as Failure;
      if (e.code === "failed") logSent(where, what, fields, { status: "failed", reason: e.reason ?? "" });
      else logError(error);
    },
  );
}

function logSent(
  where: string,
  what: string,
  fields: [string, unknown][],
  ack: { status: string; ackId?: string; offset?: number; epoch?: string; reason?: string },
): void {
  const ackFields: [string, unknown][] = [["ack", ack.status]];
  if (ack.offset !== undefined) ackFields.push(["offset", ack.offset]);
  if (ack.epoch !== undefined) ackFields.push(["epoch", ack.epoch]);
  if (ack.reason !== undefined) ackFields.push(["reason", ack.reason]);
  if (ack.ackId !== undefined) ackFields.push(["ack_id", ack.ackId]);
  let said = `ack ${ack.status}`;
  if (ack.offset !== undefined) said += `, offset ${ack.offset}`;
  if (ack.reason) said += `: ${ack.reason}`;
  addEntry("sent", `→ ${where}${what ? `: ${what}` : ""} (${said})`, [...fields, ...ackFields], { ack: ack.status });
}

// ---- wiring -------------------------------------------------------------

connectForm.addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
disconnectButton.addEventListener("click", () => disconnect(true));
sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
kindSelect.addEventListener("change", syncSendForm);
targetSelect.addEventListener("change", syncSendForm);
$<HTMLButtonElement>("#clear-log").addEventListener("click", () => log.replaceChildren());
$<HTMLInputElement>("#hide-state").addEventListener("change", (event) => {
  log.classList.toggle("hide-state", (event.target as HTMLInputElement).checked);
});

function fromQuery(): void {
  const q = new URLSearchParams(location.search);
  hubInput.value = q.get("hub") ?? defaultHub();
  groupInput.value = q.get("group") ?? "";
  clientInput.value = q.get("client") ?? "";
  apiKeyInput.value = q.get("api_key") ?? "";
  tokenInput.value = q.get("token") ?? "";
  const target = q.get("target");
  if (target && [...targetSelect.options].some((o) => o.value === target)) {
    targetSelect.value = target;
  }
  toInput.value = q.get("to") ?? "";
  syncSendForm();
  setState("idle");
  const auto = q.get("autoconnect");
  if ((auto === "1" || auto === "true") && groupInput.value && clientInput.value) connect();
}

fromQuery();
setupOperator(() => groupInput.value.trim());
