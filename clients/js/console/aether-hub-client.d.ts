// For type-checking only: console.ts imports "./aether-hub-client.js", the
// client's browser build that scripts/build.mjs copies next to console.js.
export * from "../src/index.js";
