export {
  controlToken,
  inlineSecretPaths,
  REDACTED,
  redactSecrets,
  resolveSecrets,
  type SecretProblem,
} from "./_secrets.ts";
export { formatDuration, type Rate } from "./_values.ts";
export {
  CONFIG_SEARCH_PATH,
  type ConfigProblem,
  ConfigError,
  findConfigPath,
  formatProblems,
  type LoadedConfig,
  loadConfig,
  parseConfigText,
  renderConfigYaml,
} from "./load.ts";
export { RELOAD, type ReloadClass, reloadClassOf, restartNeeded } from "./reload.ts";
export type { RawConfig } from "./schema.ts";
export type {
  BouncesConfig,
  ClusterConfig,
  Config,
  DeliveryConfig,
  DomainPolicy,
  DomainTlsMode,
  ListenerConfig,
  RouteConfig,
  SuppressionConfig,
  TlsMode,
  TlsPolicyConfig,
  WebhookConfig,
} from "./types.ts";
export { DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS } from "./_feedback.ts";
