export { Daemon, runDaemon } from "./daemon.ts";
export { DkimSigner, formatTxtRecord, generateKey } from "../dkim/index.ts";
