// Debian's Chromium for the browser tests (playwright-core cannot download
// its own here): where it is, how it is launched, where screenshots go.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const CHROMIUM = "/usr/bin/chromium";
export const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
export const RESULTS = join(dirname(fileURLToPath(import.meta.url)), "../../test-results");
/** Whether the browser is installed (`scripts/test` installs it). */
export const haveChromium = existsSync(CHROMIUM);
