// The console's Operator tab end to end in Debian's Chromium (playwright-core),
// on a hub with admin keys and client keys. Two members of a group are plain
// `ws` sockets in Node, so the test sees exactly which close code each gets.
// The page shows the fleet (this instance, its socket count), refuses a
// wrong key (401) and a client key (403) plainly, lists the group's members,
// disconnects one (its socket closes with 4010 and it leaves the list), and
// lists the group's history with a message sent earlier. The admin key stays
// out of the address and the page's storage; the page breaks no CSP rule.
// A screenshot is saved to test-results/console-operator.png.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { startHub, type Hub } from "../support/hub.js";
import { ARGS, CHROMIUM, haveChromium, RESULTS } from "./chromium.js";

/** The longest any one wait in this test may take. */
const WAIT_MS = 20_000;
const GROUP = "operator-e2e";
const INSTANCE = "hub-operator-e2e";
const ADMIN_KEY = "admin-key-e2e-7f3a";
const CLIENT_KEY = "client-key-e2e-19c2";
const NOTE = "before the operator came";

if (!haveChromium) {
  console.warn(`operator.test.ts: SKIPPED: ${CHROMIUM} not found (apt-get install chromium)`);
}

/** A member of GROUP as a plain socket: its frames, and its close code once closed. */
interface Member {
  socket: WebSocket;
  frames: Record<string, unknown>[];
  closed: Promise<{ code: number; reason: string }>;
}

function withTimeout<T>(what: string, promise: Promise<T>, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function connectMember(hub: Hub, client: string): Promise<Member> {
  const socket = new WebSocket(`${hub.url}/v3/ws/group/${GROUP}/client/${client}?api_key=${CLIENT_KEY}`);
  const frames: Record<string, unknown>[] = [];
  socket.on("message", (data: Buffer) => frames.push(JSON.parse(data.toString()) as Record<string, unknown>));
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    socket.once("close", (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })),
  );
  await withTimeout(
    `${client} opens`,
    new Promise<void>((resolve, reject) => {
      socket.once("open", () => resolve());
      socket.once("error", reject);
    }),
  );
  return { socket, frames, closed };
}

async function until(what: string, pred: () => boolean): Promise<void> {
  const end = Date.now() + WAIT_MS;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${WAIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(!haveChromium)("the console's Operator tab in Chromium", () => {
  let hub: Hub;
  let browser: Browser;
  const members: Member[] = [];
  const problems: string[] = [];

  beforeAll(async () => {
    hub = await startHub({
      env: { AETHER_ADMIN_API_KEYS: ADMIN_KEY, AETHER_API_KEYS: CLIENT_KEY, AETHER_INSTANCE_ID: INSTANCE },
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: WAIT_MS });
  });

  afterAll(async () => {
    for (const m of members) m.socket.terminate();
    await browser?.close();
    await hub?.stop();
  });

  async function open(): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on("pageerror", (e) => problems.push(`page: ${e.message}`));
    page.on("console", (m) => {
      // Policy violations and blocked resources show up here; the refused
      // calls this test makes on purpose (401, 403) are logged too.
      const text = m.text();
      const refused = /Failed to load resource: the server responded with a status of 40[13]/.test(text);
      if (m.type() === "error" && !refused) problems.push(`page: ${text}`);
    });
    await page.goto(`${hub.httpUrl}/console`, { timeout: WAIT_MS });
    return page;
  }

  /** Waits until the element's text satisfies `want` (a substring, or equality with `exact`). */
  async function waitForText(page: Page, testid: string, want: string, exact = false): Promise<void> {
    await page.waitForFunction(
      ([id, text, whole]) => {
        const got = document.querySelector(`[data-testid="${id}"]`)?.textContent ?? "";
        return whole ? got === text : got.includes(text);
      },
      [testid, want, exact] as const,
      { timeout: WAIT_MS },
    );
  }

  async function shownMembers(page: Page): Promise<string[]> {
    return page.$$eval('[data-testid="op-member"]', (items) => items.map((i) => (i as HTMLElement).dataset.client ?? ""));
  }

  async function waitForMembers(page: Page, want: string[]): Promise<void> {
    await page.waitForFunction(
      (list) => {
        const shown = [...document.querySelectorAll<HTMLElement>('[data-testid="op-member"]')].map((i) => i.dataset.client);
        return shown.length === list.length && list.every((m, i) => shown[i] === m);
      },
      want,
      { timeout: WAIT_MS },
    );
  }

  it("shows the fleet, disconnects a member with 4010 and lists the history", async () => {
    const alice = await connectMember(hub, "alice");
    const bob = await connectMember(hub, "bob");
    members.push(alice, bob);
    // Bob sees Alice's message: it is routed, so kept in the group's history.
    alice.socket.send(JSON.stringify({ msg_type: "msg", target: "group", msg: NOTE, payload: { n: 7 } }));
    await until("bob gets alice's message", () => bob.frames.some((f) => f.msg === NOTE));

    const page = await open();
    try {
      await scenario(page, alice, bob);
    } catch (error) {
      mkdirSync(RESULTS, { recursive: true });
      await page.screenshot({ path: join(RESULTS, "console-operator-failure.png"), fullPage: true }).catch(() => {});
      throw error;
    }
  }, 120_000);

  async function scenario(page: Page, alice: Member, bob: Member): Promise<void> {
    expect(await page.getByTestId("operator-view").isHidden()).toBe(true);
    await page.getByTestId("tab-operator").click();
    expect(await page.getByTestId("operator-view").isVisible()).toBe(true);
    expect(await page.locator("#client-view").isHidden()).toBe(true);
    expect(await page.getByTestId("tab-operator").getAttribute("aria-selected")).toBe("true");

    // A wrong key: 401, said plainly; a client key: 403.
    await page.getByTestId("admin-key").fill("not-the-key");
    await page.getByTestId("fleet-refresh").click();
    await waitForText(page, "fleet-error", "401");
    expect(await page.getByTestId("fleet-error").isVisible()).toBe(true);
    expect(await page.getByTestId("fleet-error").getAttribute("data-status")).toBe("401");
    expect(await page.locator('[data-testid="instance"]').count()).toBe(0);
    await page.getByTestId("admin-key").fill(CLIENT_KEY);
    await page.getByTestId("fleet-refresh").click();
    await waitForText(page, "fleet-error", "403");

    // The fleet: this instance, in memory mode, with the two members' sockets.
    await page.getByTestId("admin-key").fill(ADMIN_KEY);
    await page.getByTestId("fleet-refresh").click();
    await page.locator(`[data-testid="instance"][data-instance="${INSTANCE}"]`).waitFor({ timeout: WAIT_MS });
    expect(await page.getByTestId("fleet-error").isHidden()).toBe(true);
    const facts = Object.fromEntries(
      await page.$$eval('[data-testid="fleet"] dd[data-field]', (dds) =>
        dds.map((dd) => [(dd as HTMLElement).dataset.field ?? "", dd.textContent ?? ""]),
      ),
    );
    expect(facts).toMatchObject({ instance: INSTANCE, mode: "memory", sockets: "2" });
    expect(facts.version).toMatch(/^\d+\.\d+\.\d+/);
    const instances = await page.$$eval('[data-testid="instance"]', (rows) =>
      rows.map((r) => [(r as HTMLElement).dataset.instance, r.querySelector("td.num")?.textContent]),
    );
    expect(instances).toEqual([[INSTANCE, "2"]]);

    // The group's members; the group field follows the Client tab's (empty here).
    await page.getByTestId("op-group").fill(GROUP);
    await page.getByTestId("op-load-members").click();
    await waitForMembers(page, ["alice", "bob"]);

    // Disconnect bob: his socket closes with 4010, and he leaves the list.
    await page.locator('[data-testid="op-disconnect"][data-client="bob"]').click();
    const closed = await withTimeout("bob's socket closes", bob.closed);
    expect(closed.code).toBe(4010);
    await waitForMembers(page, ["alice"]);
    expect(await shownMembers(page)).toEqual(["alice"]);
    await waitForText(page, "members-status", "bob disconnected (4010)");
    expect(await page.getByTestId("members-error").isHidden()).toBe(true);
    expect(alice.socket.readyState).toBe(WebSocket.OPEN);

    // The history: alice's message, oldest first.
    await page.getByTestId("op-load-history").click();
    await page.locator('[data-testid="history-row"]').first().waitFor({ timeout: WAIT_MS });
    const rows = await page.$$eval('[data-testid="history-row"]', (trs) =>
      trs.map((tr) =>
        Object.fromEntries(
          [...tr.querySelectorAll<HTMLElement>("td[data-field]")].map((td) => [td.dataset.field ?? "", td.textContent ?? ""]),
        ),
      ),
    );
    const note = rows.find((r) => r.summary?.includes(NOTE));
    expect(note).toMatchObject({ msg_type: "msg", from_id: "alice → group", summary: `${NOTE}  {"n":7}` });
    expect(note?.offset).toMatch(/^[1-9][0-9]*$/);
    const offsets = rows.map((r) => Number(r.offset));
    expect(offsets).toEqual([...offsets].sort((a, b) => a - b));
    expect(await page.getByTestId("history-error").isHidden()).toBe(true);
    await waitForText(page, "history-position", `${GROUP}: epoch `);

    // One socket left in the fleet.
    await page.getByTestId("fleet-refresh").click();
    await page.waitForFunction(
      () => document.querySelector('[data-testid="fleet"] dd[data-field="sockets"]')?.textContent === "1",
      undefined,
      { timeout: WAIT_MS },
    );

    // The key stays out of the address and the page's storage.
    expect(page.url()).not.toContain(ADMIN_KEY);
    const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }]));
    expect(stored).not.toContain(ADMIN_KEY);
    expect(stored).toBe("[{},{}]");

    mkdirSync(RESULTS, { recursive: true });
    await page.screenshot({ path: join(RESULTS, "console-operator.png"), fullPage: true });
    expect(problems).toEqual([]);
  }
});
