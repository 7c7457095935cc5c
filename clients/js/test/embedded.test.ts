// The console scripts that the hub binary embeds (src/console/assets, read by
// include_bytes! in src/console.rs) must be exactly what the client and the
// console sources build to now: a stale bundle would ship old client code.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, test } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));
const embedded = join(root, "../../src/console/assets");
const fresh = mkdtempSync(join(tmpdir(), "aether-console-"));

afterAll(() => rmSync(fresh, { recursive: true, force: true }));

test("the embedded console scripts equal a fresh build", () => {
  execFileSync(process.execPath, ["scripts/build.mjs", "--out", fresh], { cwd: root, stdio: "pipe" });
  // index.html and console.css are embedded from console/ itself; the scripts are built.
  const scripts = ["aether-hub-client.js", "console.js"];
  expect(readdirSync(fresh).sort()).toEqual(["aether-hub-client.js", "console.css", "console.js", "index.html"]);
  expect(readdirSync(embedded).sort()).toEqual(scripts);
  for (const name of scripts) {
    const want = readFileSync(join(fresh, name), "utf8");
    const have = readFileSync(join(embedded, name), "utf8");
    expect(have, `src/console/assets/${name} is stale: run npm run embed in clients/js`).toBe(want);
  }
}, 60_000);
