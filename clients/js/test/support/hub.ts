// test/support/hub.ts: real processes for the tests: the aether-hub binary and redis-server,
// on free ports, every wait bounded, every process killed by stop() (and at exit).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, createConnection } from "node:net";
import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const HUB_BIN = process.env.AETHER_HUB_BIN ?? resolve(repo, "target/debug/aether-hub");

export interface Hub {
  url: string;
  httpUrl: string;
  port: number;
  stop(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls pred until it is true; throws after timeoutMs. */
export async function waitFor(
  pred: () => boolean | Promise<boolean>,
  { timeoutMs = 10_000, intervalMs = 20 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > end) throw new Error(`waitFor: condition not met within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

let built = false;
function ensureBinary(): void {
  if (built || existsSync(HUB_BIN)) return;
  execFileSync("cargo", ["build", "--bin", "aether-hub"], { cwd: repo, stdio: "inherit", timeout: 900_000 });
  built = true;
}

function exited(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((r) => p.once("exit", () => r()));
}

async function kill(p: ChildProcess, signal: NodeJS.Signals, graceMs = 5000): Promise<void> {
  if (p.exitCode === null && p.signalCode === null) {
    p.kill(signal);
    const done = await Promise.race([exited(p).then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      p.kill("SIGKILL");
      await exited(p);
    }
  }
  live.delete(p);
}

export async function startHub(opts: { env?: Record<string, string>; port?: number } = {}): Promise<Hub> {
  ensureBinary();
  const port = opts.port ?? (await freePort());
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    AETHER_LOG: "warn",
    AETHER_SHUTDOWN_GRACE_SECS: "1",
    ...opts.env,
    AETHER_BIND: `127.0.0.1:${port}`,
  };
  let proc: ChildProcess | undefined;
  let stderr = "";

  const launch = async () => {
    stderr = "";
    const p = spawn(HUB_BIN, [], { env, stdio: ["ignore", "ignore", "pipe"] });
    live.add(p);
    p.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    proc = p;
    try {
      await waitFor(
        async () => {
          if (p.exitCode !== null) throw new Error(`aether-hub exited with ${p.exitCode}: ${stderr}`);
          try {
            const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(1000) });
            return res.status === 200;
          } catch {
            return false;
          }
        },
        { timeoutMs: 20_000, intervalMs: 50 },
      );
    } catch (e) {
      await kill(p, "SIGKILL");
      throw new Error(`aether-hub on port ${port} not ready: ${(e as Error).message}\n${stderr}`);
    }
  };
  await launch();

  const hub: Hub = {
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    port,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (proc) await kill(proc, signal);
    },
    async restart() {
      if (proc) await kill(proc, "SIGTERM");
      await launch();
    },
  };
  return hub;
}

export async function startRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  live.add(p);
  const ping = () =>
    new Promise<boolean>((r) => {
      const s = createConnection({ host: "127.0.0.1", port }, () => s.write("PING\r\n"));
      s.setTimeout(1000, () => (s.destroy(), r(false)));
      s.on("data", (d) => (s.destroy(), r(d.toString().startsWith("+PONG"))));
      s.on("error", () => r(false));
    });
  try {
    await waitFor(async () => {
      if (p.exitCode !== null) throw new Error(`redis-server exited with ${p.exitCode}`);
      return ping();
    }, { timeoutMs: 10_000, intervalMs: 50 });
  } catch (e) {
    await kill(p, "SIGKILL");
    throw e;
  }
  return { url: `redis://127.0.0.1:${port}`, stop: () => kill(p, "SIGTERM") };
}
