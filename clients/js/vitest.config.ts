// vitest.config.ts: node environment, tests in test/**/*.test.ts (the Chromium test in
// test/browser/ is run by its own script), real hub processes: generous but bounded timeouts.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "node",
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    teardownTimeout: 20_000,
    maxWorkers: 2,
  },
});
