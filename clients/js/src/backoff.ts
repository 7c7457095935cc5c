// backoff.ts: the reconnect delay (full-jitter exponential backoff).

export interface BackoffOptions {
  minDelayMs: number;
  maxDelayMs: number;
}

/**
 * Full jitter: a uniformly random delay in [0, min(maxDelayMs, minDelayMs * 2^attempt)].
 * `attempt` counts failed attempts since the last open, from 0.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number = Math.random): number {
  const exp = Math.min(Math.max(attempt, 0), 30);
  const cap = Math.min(opts.maxDelayMs, opts.minDelayMs * 2 ** exp);
  return Math.floor(random() * cap);
}
