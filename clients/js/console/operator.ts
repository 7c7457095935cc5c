// The console's Operator tab: the hub's server API (docs/protocol.md
// section 11) from the same origin, with an admin key typed by the operator.
// The key lives in its password field only: it is sent as X-Aether-API-Key
// with each call and never stored, put in the address or logged.
//
// Three panels: the fleet (GET /v3/info), a group's members (GET
// /v3/groups/{g}/presence, each with a button that POSTs /v3/disconnect) and
// the group's recent history (GET /v3/history/group/{g}?limit=50).

import { $, el } from "./dom.js";

interface Info {
  instance: string;
  version: string;
  mode: string;
  sockets: number;
  instances: { id: string; sockets: number }[];
}

interface Presence {
  group_id: string;
  members: string[];
}

interface Kept {
  msg_type?: string;
  target?: string;
  from_id?: string;
  to_id?: string | null;
  cmd?: string | null;
  msg?: string | null;
  payload?: unknown;
  offset?: number;
}

interface History {
  epoch: string;
  offset: number;
  recovered: boolean;
  messages: Kept[];
}

/** Messages shown by the history panel (the newest the hub keeps, up to this). */
const HISTORY_LIMIT = 50;
/** After a disconnect, how often and how long the members are re-read until it shows. */
const SETTLE_MS = 250;
const SETTLE_TRIES = 12;
/** Where a payload's summary is cut. */
const SUMMARY_CHARS = 120;

/** A failed call: the HTTP status (0 when no answer came) and what the hub said. */
class CallError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const tabs = {
  client: { tab: $<HTMLButtonElement>("#tab-client"), view: $<HTMLElement>("#client-view") },
  operator: { tab: $<HTMLButtonElement>("#tab-operator"), view: $<HTMLElement>("#operator-view") },
};

const keyForm = $<HTMLFormElement>("#admin-form");
const keyInput = keyForm.elements.namedItem("adminKey") as HTMLInputElement;
const fleetError = $<HTMLElement>('[data-testid="fleet-error"]');
const fleetFacts = $<HTMLElement>('[data-testid="fleet"]');
const instancesBody = $<HTMLTableSectionElement>('[data-testid="instances"] tbody');

const groupForm = $<HTMLFormElement>("#op-group-form");
const groupInput = groupForm.elements.namedItem("group") as HTMLInputElement;
const reconnectBox = groupForm.elements.namedItem("reconnect") as HTMLInputElement;
const reasonInput = groupForm.elements.namedItem("reason") as HTMLInputElement;
const membersError = $<HTMLElement>('[data-testid="members-error"]');
const membersStatus = $<HTMLElement>('[data-testid="members-status"]');
const membersList = $<HTMLUListElement>('[data-testid="op-members"]');

const historyError = $<HTMLElement>('[data-testid="history-error"]');
const historyPosition = $<HTMLElement>('[data-testid="history-position"]');
const historyBody = $<HTMLTableSectionElement>('[data-testid="history"] tbody');

// ---- calls ----------------------------------------------------------------

/** One call to this hub's server API; resolves with the JSON answer or throws a CallError. */
async function call<T>(method: "GET" | "POST", path: string, body?: object): Promise<T> {
  const headers: Record<string, string> = {};
  // With no keys configured (development) the hub needs none: send only what was typed.
  if (keyInput.value) headers["X-Aether-API-Key"] = keyInput.value;
  if (body) headers["Content-Type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    throw new CallError(0, `no answer from the hub (${(error as Error).message})`);
  }
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const said = (data as { error?: unknown } | null)?.error;
    const detail = typeof said === "string" ? said : text.trim().slice(0, 200) || response.statusText;
    throw new CallError(response.status, `${response.status}${detail ? `: ${detail}` : ""}`);
  }
  return data as T;
}

/** Shows a failure in a panel's error line (or clears it). */
function showError(where: HTMLElement, error: unknown): void {
  if (error === null) {
    where.hidden = true;
    where.textContent = "";
    delete where.dataset.status;
    return;
  }
  const status = error instanceof CallError ? error.status : 0;
  const hint =
    status === 401
      ? " (no valid key: check the admin key)"
      : status === 403
        ? " (this key may not do that: use an admin key)"
        : status === 503
          ? " (the hub's store is unavailable)"
          : "";
  where.textContent = `${(error as Error).message ?? String(error)}${hint}`;
  where.dataset.status = String(status);
  where.hidden = false;
}

function path(...segments: string[]): string {
  return `/v3/${segments.map(encodeURIComponent).join("/")}`;
}

function group(): string | null {
  if (!groupInput.reportValidity()) return null;
  return groupInput.value.trim();
}

// ---- the fleet ------------------------------------------------------------

async function loadFleet(): Promise<void> {
  try {
    const info = await call<Info>("GET", "/v3/info");
    showError(fleetError, null);
    const facts: [string, unknown][] = [
      ["instance", info.instance],
      ["version", info.version],
      ["mode", info.mode],
      ["sockets", info.sockets],
    ];
    fleetFacts.replaceChildren(
      ...facts.map(([name, value]) => {
        const pair = el("div");
        const dd = el("dd", "", String(value));
        dd.dataset.field = name;
        pair.append(el("dt", "", name), dd);
        return pair;
      }),
    );
    instancesBody.replaceChildren(
      ...[...info.instances]
        .sort((a, b) => a.id.localeCompare(b.id))
        .map((i) => {
          const row = el("tr");
          row.dataset.testid = "instance";
          row.dataset.instance = i.id;
          if (i.id === info.instance) row.className = "this";
          row.append(el("td", "mono", i.id + (i.id === info.instance ? " (this one)" : "")), el("td", "num", String(i.sockets)));
          return row;
        }),
    );
  } catch (error) {
    fleetFacts.replaceChildren();
    instancesBody.replaceChildren();
    showError(fleetError, error);
  }
}

// ---- members --------------------------------------------------------------

/** Reads and shows the group's members; resolves with them (null on a failure). */
async function loadMembers(g: string): Promise<string[] | null> {
  try {
    const presence = await call<Presence>("GET", `${path("groups", g)}/presence`);
    showError(membersError, null);
    renderMembers(g, presence.members);
    return presence.members;
  } catch (error) {
    membersList.replaceChildren();
    showError(membersError, error);
    return null;
  }
}

function renderMembers(g: string, members: string[]): void {
  membersList.dataset.group = g;
  membersList.replaceChildren(
    ...members.map((id) => {
      const item = el("li");
      item.dataset.testid = "op-member";
      item.dataset.client = id;
      const button = el("button", "danger", "disconnect");
      button.type = "button";
      button.dataset.testid = "op-disconnect";
      button.dataset.client = id;
      button.title = `close every socket of ${id} in ${g}`;
      button.addEventListener("click", () => void disconnect(g, id, button));
      item.append(el("span", "mono", id), button);
      return item;
    }),
  );
}

async function disconnect(g: string, client: string, button: HTMLButtonElement): Promise<void> {
  const reconnect = reconnectBox.checked;
  const body: Record<string, unknown> = { client_id: client, group_id: g, reconnect };
  if (reasonInput.value.trim()) body.reason = reasonInput.value.trim();
  button.disabled = true;
  try {
    await call("POST", "/v3/disconnect", body);
  } catch (error) {
    button.disabled = false;
    showError(membersError, error);
    return;
  }
  showError(membersError, null);
  membersStatus.textContent = `${client} disconnected (${reconnect ? "4011, asked to reconnect" : "4010"})`;
  // The sockets close within a second: re-read the members until the client is gone.
  for (let i = 0; i < SETTLE_TRIES; i += 1) {
    const members = await loadMembers(g);
    if (members === null || !members.includes(client)) return;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
  }
}

// ---- history --------------------------------------------------------------

function summary(m: Kept): string {
  const parts: string[] = [];
  if (m.cmd) parts.push(`cmd ${m.cmd}`);
  if (m.msg) parts.push(m.msg);
  if (m.payload !== undefined && m.payload !== null) {
    const json = JSON.stringify(m.payload);
    if (json !== "{}") parts.push(json.length > SUMMARY_CHARS ? `${json.slice(0, SUMMARY_CHARS)}…` : json);
  }
  return parts.join("  ");
}

async function loadHistory(g: string): Promise<void> {
  try {
    const h = await call<History>("GET", `${path("history", "group", g)}?limit=${HISTORY_LIMIT}`);
    showError(historyError, null);
    historyPosition.textContent = h.epoch
      ? `${g}: epoch ${h.epoch}, offset ${h.offset}, ${h.messages.length} shown`
      : `${g}: history is off`;
    // Oldest first, as the hub sends them.
    const messages = [...h.messages].sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
    const rows = messages.map((m) => {
      const row = el("tr");
      row.dataset.testid = "history-row";
      const to = m.target === "direct" ? `→ ${m.to_id ?? ""}` : m.target ? `→ ${m.target}` : "";
      const cells: [string, string, string][] = [
        ["offset", "num", String(m.offset ?? "")],
        ["msg_type", "", m.msg_type ?? ""],
        ["from_id", "mono nowrap", `${m.from_id ?? ""} ${to}`.trim()],
        ["summary", "mono wide", summary(m)],
      ];
      for (const [field, className, text] of cells) {
        const cell = el("td", className, text);
        cell.dataset.field = field;
        row.append(cell);
      }
      return row;
    });
    if (rows.length === 0) {
      const row = el("tr");
      const cell = el("td", "muted", "no kept messages");
      cell.colSpan = 4;
      row.append(cell);
      rows.push(row);
    }
    historyBody.replaceChildren(...rows);
  } catch (error) {
    historyPosition.textContent = "";
    historyBody.replaceChildren();
    showError(historyError, error);
  }
}

// ---- wiring ---------------------------------------------------------------

function showTab(name: keyof typeof tabs): void {
  for (const [key, { tab, view }] of Object.entries(tabs)) {
    const on = key === name;
    tab.setAttribute("aria-selected", String(on));
    view.hidden = !on;
  }
}

/** Wires the Operator tab; `clientGroup` is the Client tab's group, the default here. */
export function setupOperator(clientGroup: () => string): void {
  tabs.client.tab.addEventListener("click", () => showTab("client"));
  tabs.operator.tab.addEventListener("click", () => {
    if (!groupInput.value) groupInput.value = clientGroup();
    showTab("operator");
  });
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void loadFleet();
  });
  $<HTMLButtonElement>("#forget-key").addEventListener("click", () => {
    keyInput.value = "";
    keyInput.focus();
  });
  groupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const g = group();
    if (!g) return;
    membersStatus.textContent = "";
    void loadMembers(g);
  });
  $<HTMLButtonElement>("#op-history").addEventListener("click", () => {
    const g = group();
    if (g) void loadHistory(g);
  });
  showTab("client");
}
