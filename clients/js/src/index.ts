// index.ts: the public API of aether-hub-client.

export { AetherClient } from "./client.js";
export type {
  AetherClientOptions,
  AetherEvents,
  EventTargetLike,
  PresenceEvent,
  State,
  StateEvent,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export type { Ack } from "./acks.js";
export { AetherError } from "./errors.js";
export type { AetherErrorCode } from "./errors.js";
export { isVisionId } from "./frames.js";
export type { Body, Message, MsgType, Target } from "./frames.js";
export type { Position, RecoveredEvent, Route, RouteSummary } from "./recovery.js";
export { backoffDelay } from "./backoff.js";
export { decideClose, decideHttpStatus } from "./closeCodes.js";
