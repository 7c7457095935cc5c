// The console end to end in Debian's Chromium (playwright-core): a controller
// page straight on the hub, a worker page behind a proxy. The worker receives
// the controller's commands; its connection is cut, the commands sent
// meanwhile arrive in order, exactly once, after it reconnects by itself, with
// a recovery summary saying nothing was lost. Every command the controller
// sends is logged with its ack (ok, and the offset the worker receives it
// with). A screenshot is saved to test-results/console.png.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startHub, type Hub } from "../support/hub.js";
import { ARGS, CHROMIUM, haveChromium, RESULTS } from "./chromium.js";
import { startProxy, type Proxy } from "../support/proxy.js";

/** The longest any one wait in this test may take. */
const WAIT_MS = 20_000;
const GROUP = "console-e2e";

if (!haveChromium) {
  console.warn(`console.test.ts: SKIPPED: ${CHROMIUM} not found (apt-get install chromium)`);
}

describe.skipIf(!haveChromium)("the console in Chromium", () => {
  let hub: Hub;
  let proxy: Proxy;
  let browser: Browser;
  const problems: string[] = [];

  beforeAll(async () => {
    hub = await startHub();
    proxy = await startProxy({ host: "127.0.0.1", port: hub.port });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: WAIT_MS });
  });

  afterAll(async () => {
    await browser?.close();
    await proxy?.close();
    await hub?.stop();
  });

  /** A console page in a fresh context, joining as `client` through `base`. */
  async function open(base: string, client: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on("pageerror", (e) => problems.push(`${client}: ${e.message}`));
    page.on("console", (m) => {
      // Blocked resources and policy violations show up here; failed
      // WebSocket attempts while the proxy refuses are expected.
      const text = m.text();
      if (m.type() === "error" && !text.includes("WebSocket connection")) {
        problems.push(`${client}: ${text}`);
      }
    });
    const query = new URLSearchParams({ group: GROUP, client, autoconnect: "1" });
    await page.goto(`${base}/console?${query.toString()}`, { timeout: WAIT_MS });
    return page;
  }

  async function waitForText(page: Page, testid: string, text: string): Promise<void> {
    await page.waitForFunction(
      ([id, want]) => document.querySelector(`[data-testid="${id}"]`)?.textContent === want,
      [testid, text] as const,
      { timeout: WAIT_MS },
    );
  }

  async function waitForMembers(page: Page, members: string[]): Promise<void> {
    await page.waitForFunction(
      (want) => {
        const shown = [...document.querySelectorAll<HTMLElement>('[data-testid="member"]')].map(
          (b) => b.dataset.client,
        );
        return want.every((m) => shown.includes(m));
      },
      members,
      { timeout: WAIT_MS },
    );
  }

  /** The rendered fields of every `cmd` entry of a page's log, in order. */
  async function commands(page: Page): Promise<Record<string, string>[]> {
    return page.$$eval('[data-testid="log-entry"][data-kind="cmd"]', (entries) =>
      entries.map((entry) =>
        Object.fromEntries(
          [...entry.querySelectorAll<HTMLElement>("dd[data-field]")].map((dd) => [
            dd.dataset.field ?? "",
            dd.textContent ?? "",
          ]),
        ),
      ),
    );
  }

  /** Every `sent` entry of a page's log: its ack status and its rendered fields. */
  async function sentEntries(page: Page): Promise<Array<{ ack: string; fields: Record<string, string> }>> {
    return page.$$eval('[data-testid="log-entry"][data-kind="sent"]', (entries) =>
      entries.map((entry) => ({
        ack: (entry as HTMLElement).dataset.ack ?? "",
        fields: Object.fromEntries(
          [...entry.querySelectorAll<HTMLElement>("dd[data-field]")].map((dd) => [
            dd.dataset.field ?? "",
            dd.textContent ?? "",
          ]),
        ),
      })),
    );
  }

  async function waitForCommands(page: Page, count: number): Promise<void> {
    await page.waitForFunction(
      (n) => document.querySelectorAll('[data-testid="log-entry"][data-kind="cmd"]').length >= n,
      count,
      { timeout: WAIT_MS },
    );
  }

  /** Sends a cmd from the page's send form and waits until its ack is logged. */
  async function sendCmd(page: Page, cmd: string, payload: object, target = "group"): Promise<void> {
    const sent = await page.locator('[data-testid="log-entry"][data-kind="sent"]').count();
    await page.getByTestId("kind").selectOption("cmd");
    await page.getByTestId("cmd").fill(cmd);
    await page.getByTestId("msg").fill(`run ${cmd}`);
    await page.getByTestId("payload").fill(JSON.stringify(payload));
    await page.getByTestId("target").selectOption(target);
    await page.getByTestId("send").click();
    await page.waitForFunction(
      (n) => document.querySelectorAll('[data-testid="log-entry"][data-kind="sent"]').length > n,
      sent,
      { timeout: WAIT_MS },
    );
  }

  /** Saves what every page shows when a step fails, then fails. */
  async function failing(pages: Map<string, Page>, error: unknown): Promise<never> {
    mkdirSync(RESULTS, { recursive: true });
    for (const [name, page] of pages) {
      await page.screenshot({ path: join(RESULTS, `console-failure-${name}.png`), fullPage: true }).catch(() => {});
    }
    throw error;
  }

  it("a worker behind a cut connection gets every command, in order, exactly once", async () => {
    const pages = new Map<string, Page>();
    const controller = await open(hub.httpUrl, "controller");
    pages.set("controller", controller);
    const worker = await open(proxy.httpUrl, "worker");
    pages.set("worker", worker);
    await scenario(controller, worker).catch((e: unknown) => failing(pages, e));
  }, 120_000);

  async function scenario(controller: Page, worker: Page): Promise<void> {
    await waitForText(controller, "state", "open");
    await waitForText(worker, "state", "open");
    await waitForMembers(controller, ["controller", "worker"]);
    await waitForMembers(worker, ["controller", "worker"]);

    // Clicking a member targets it directly.
    await controller.locator('[data-testid="member"][data-client="worker"]').click();
    expect(await controller.getByTestId("target").inputValue()).toBe("direct");
    expect(await controller.getByTestId("to").inputValue()).toBe("worker");
    await sendCmd(controller, "start", { job: 1 }, "direct");
    await waitForCommands(worker, 1);
    const [first] = await commands(worker);
    expect(first).toMatchObject({
      msg_type: "cmd",
      target: "direct",
      from_id: "controller",
      to_id: "worker",
      cmd: "start",
      msg: "run start",
      payload: '{"job":1}',
      version: "3",
    });
    expect(first?.offset).toMatch(/^[1-9][0-9]*$/);
    expect(first?.epoch).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(first?.sent_at).toMatch(/^\d{4}-\d\d-\d\dT/);
    // The controller's log shows the send's ack: ok, with the offset the worker got.
    const [sentStart] = await sentEntries(controller);
    expect(sentStart).toMatchObject({
      ack: "ok",
      fields: { ack: "ok", cmd: "start", target: "direct", offset: first?.offset, epoch: first?.epoch },
    });
    expect(sentStart?.fields.ack_id).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(
      await controller.locator('[data-testid="log-entry"][data-kind="sent"] .summary').first().textContent(),
    ).toContain(`(ack ok, offset ${first?.offset})`);

    // Cut the worker off and keep it off while the controller sends.
    proxy.pause();
    proxy.cut();
    await worker.waitForFunction(
      () => document.querySelector('[data-testid="state"]')?.textContent !== "open",
      undefined,
      { timeout: WAIT_MS },
    );
    for (const n of [1, 2, 3]) {
      await sendCmd(controller, `step-${n}`, { n });
    }
    expect(await commands(worker)).toHaveLength(1);

    // Back: the worker reconnects by itself and recovers.
    proxy.resume();
    await waitForText(worker, "reconnects", "1");
    await waitForText(worker, "state", "open");
    const recovery = worker.locator('[data-testid="log-entry"][data-kind="recovery"]');
    await recovery.first().waitFor({ timeout: WAIT_MS });
    expect(await recovery.count()).toBe(1);
    expect(await recovery.getAttribute("data-recovered")).toBe("true");
    expect(await recovery.locator('dd[data-field="recovered"]').textContent()).toBe("true");
    expect(await recovery.locator('dd[data-field="group"]').textContent()).toMatch(
      /^recovered true, missed 3,/,
    );
    await waitForCommands(worker, 4);
    // Anything duplicated would be there by now: replays come before the summary.
    await worker.waitForTimeout(300);
    const received = await commands(worker);
    expect(received.map((c) => c.cmd)).toEqual(["start", "step-1", "step-2", "step-3"]);
    const steps = received.slice(1);
    for (const [i, c] of steps.entries()) {
      expect(c).toMatchObject({ target: "group", group_id: GROUP, from_id: "controller", payload: `{"n":${i + 1}}` });
    }
    const offsets = steps.map((c) => Number(c.offset));
    expect(offsets).toEqual([...offsets].sort((a, b) => a - b));
    expect(new Set(offsets).size).toBe(3);
    // Each step's ack, logged by the controller, has the offset the worker received it with.
    const stepAcks = (await sentEntries(controller)).slice(1);
    expect(stepAcks.map((e) => [e.ack, e.fields.cmd, e.fields.offset])).toEqual(
      steps.map((c) => ["ok", c.cmd, c.offset]),
    );
    // The replayed commands are logged before the recovery summary.
    const order = await worker.$$eval('[data-testid="log-entry"]', (entries) =>
      entries.map((e) => (e as HTMLElement).dataset.kind),
    );
    expect(order.lastIndexOf("cmd")).toBeLessThan(order.indexOf("recovery"));

    await waitForMembers(worker, ["controller", "worker"]);
    await waitForMembers(controller, ["controller", "worker"]);

    mkdirSync(RESULTS, { recursive: true });
    await worker.screenshot({ path: join(RESULTS, "console.png"), fullPage: true });
    await controller.screenshot({ path: join(RESULTS, "console-controller.png"), fullPage: true });
    expect(problems).toEqual([]);
  }
});
