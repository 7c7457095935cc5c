// test/support/proxy.ts: a TCP proxy the test controls, to cut connections (a dropped
// network) or refuse new ones, without touching the hub.
import { createConnection, createServer, type Socket } from "node:net";

export interface Proxy {
  port: number;
  url: string;
  httpUrl: string;
  /** Destroys every open connection. */
  cut(): void;
  /** Refuses (destroys) new connections until resume(). */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

export function startProxy(target: { host: string; port: number }): Promise<Proxy> {
  const open = new Set<Socket>();
  let paused = false;
  const server = createServer((client) => {
    if (paused) {
      client.destroy();
      return;
    }
    const upstream = createConnection(target);
    open.add(client);
    open.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      resolve({
        port,
        url: `ws://127.0.0.1:${port}`,
        httpUrl: `http://127.0.0.1:${port}`,
        cut() {
          for (const s of [...open]) s.destroy();
          open.clear();
        },
        pause() {
          paused = true;
        },
        resume() {
          paused = false;
        },
        close() {
          for (const s of [...open]) s.destroy();
          open.clear();
          return new Promise<void>((r) => server.close(() => r()));
        },
      });
    });
  });
}
