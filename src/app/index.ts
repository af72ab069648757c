export { Daemon, runDaemon } from "./daemon.ts";
