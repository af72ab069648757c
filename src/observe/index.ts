export * from "./control.ts";
export * from "./logger.ts";
export * from "./metrics.ts";
export * from "./process.ts";
export * from "./deliveryLog.ts";
