// Turns vitest's JSON report into one line in cargo test's words, so that
// .ci/run, which adds up cargo's "test result:" lines, counts these tests too.
import { readFileSync } from "node:fs";

const report = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ok = report.numFailedTests === 0 && report.success !== false ? "ok" : "FAILED";
console.log(
  `test result: ${ok}. ${report.numPassedTests} passed; ${report.numFailedTests} failed; ` +
    `${report.numPendingTests + report.numTodoTests} ignored (clients/js)`,
);
