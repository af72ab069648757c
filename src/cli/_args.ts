/** Arguments shared by several commands. */
export const configArg = {
  config: {
    type: "string",
    alias: "c",
    description: "Configuration file (else $MTA_CONFIG, ./mta.yaml, /etc/mta/mta.yaml)",
  },
} as const;
