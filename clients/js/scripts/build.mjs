// scripts/build.mjs: builds the package and the console assets, deterministically.
//   dist/index.js (ESM), dist/index.cjs (CJS), dist/*.d.ts + dist/*.d.cts (tsc declarations),
//   dist/aether-hub-client.min.js (the browser build: ESM, minified, one file),
//   and the console (console/index.html, console.css, console.ts → console.js, bundling the
//   console's own modules dom.ts and operator.ts, with ./aether-hub-client.js external,
//   plus aether-hub-client.js) into dist/console, or
//   into the directory given with --out DIR.
// --embed also writes the console's two scripts into ../../src/console/assets, the copy the
// hub binary embeds (with console/index.html and console/console.css as they are); only `npm run embed` does that, so no check or test can refresh the copy that
// test/embedded.test.ts compares with a fresh build.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const args = process.argv.slice(2);
const outIdx = args.indexOf("--out");
if ((outIdx >= 0 && !args[outIdx + 1]) || (outIdx >= 0 && args.includes("--embed"))) {
  console.error("usage: node scripts/build.mjs [--out DIR | --embed]");
  process.exit(2);
}
const consoleOut = outIdx >= 0 ? resolve(args[outIdx + 1]) : join(dist, "console");
const embedded = join(root, "../../src/console/assets");

const common = {
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  platform: "neutral",
  target: "es2020",
  legalComments: "none",
  logLevel: "warning",
  absWorkingDir: root,
};

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

await build({ ...common, format: "esm", outfile: join(dist, "index.js") });
await build({ ...common, format: "cjs", outfile: join(dist, "index.cjs") });
await build({ ...common, format: "esm", minify: true, outfile: join(dist, "aether-hub-client.min.js") });

// Declarations: tsc writes dist/*.d.ts; every file gets a .d.cts twin whose relative
// imports point at .cjs, so the CJS entry has CJS-typed declarations (no "masquerading").
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { cwd: root, stdio: "inherit" });
for (const name of readdirSync(dist).sort()) {
  if (!name.endsWith(".d.ts")) continue;
  const text = readFileSync(join(dist, name), "utf8").replace(/(from\s+["']\.\/[^"']+)\.js(["'])/g, "$1.cjs$2");
  writeFileSync(join(dist, name.replace(/\.d\.ts$/, ".d.cts")), text);
}

// The console.
const consoleDir = join(root, "console");
const sources = ["index.html", "console.css", "console.ts", "dom.ts", "operator.ts"];
const missing = sources.filter((f) => !existsSync(join(consoleDir, f)));
if (missing.length > 0) {
  console.log(`build: console sources missing (${missing.join(", ")}): console assets not written`);
} else {
  mkdirSync(consoleOut, { recursive: true });
  copyFileSync(join(consoleDir, "index.html"), join(consoleOut, "index.html"));
  copyFileSync(join(consoleDir, "console.css"), join(consoleOut, "console.css"));
  copyFileSync(join(dist, "aether-hub-client.min.js"), join(consoleOut, "aether-hub-client.js"));
  await build({
    entryPoints: [join(consoleDir, "console.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    minify: true,
    legalComments: "none",
    logLevel: "warning",
    absWorkingDir: root,
    external: ["./aether-hub-client.js"],
    outfile: join(consoleOut, "console.js"),
  });
  console.log(`build: console assets written to ${consoleOut}`);
  if (args.includes("--embed")) {
    rmSync(embedded, { recursive: true, force: true });
    mkdirSync(embedded, { recursive: true });
    // The page and its style are embedded from console/ itself: only the scripts are copied.
    for (const name of ["aether-hub-client.js", "console.js"]) copyFileSync(join(consoleOut, name), join(embedded, name));
    console.log(`build: console assets embedded in ${embedded}`);
  }
}
