export type {
  AddressLookup,
  CnameLink,
  DnsError,
  MxLookup,
  Resolver,
  ResolverOptions,
  TlsaLookup,
  TlsaRecord,
  TxtLookup,
} from "./_resolver.ts";
export { createResolver, parseDnsServers, readResolvConf } from "./_resolver.ts";
export type { RouteHost, RouteOptions, RouteResult } from "./_route.ts";
export { orderMxHosts, resolveDestination } from "./_route.ts";
