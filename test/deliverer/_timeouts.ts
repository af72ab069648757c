/** Client timeouts short enough for tests against scripted peers on loopback. */
import { RFC5321_TIMEOUTS } from "../../src/deliverer/index.ts";

export const FAST = {
  ...RFC5321_TIMEOUTS,
  connectMs: 1000,
  greetingMs: 300,
  ehloMs: 1000,
  mailMs: 1000,
  rcptMs: 1000,
  dataInitMs: 1000,
  dataBlockMs: 1000,
  dataDoneMs: 300,
  rsetMs: 300,
  quitMs: 300,
};
