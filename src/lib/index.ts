export * from "./assert.ts";
export * from "./bytes.ts";
export * from "./clock.ts";
export * from "./errors.ts";
export * from "./ids.ts";
export * from "./net.ts";
export * from "./flock.ts";
export * from "./fault.ts";
