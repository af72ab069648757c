/**
 * RFC 5322 messages: the header section, fields, address lists, composing a message from parts.
 *
 * Owns: the public face of message/ (every header splitter of the program is here).
 * Does not own: MIME content conversion (mime/), DKIM canonicalization (dkim/), DSN text (bounce/).
 */
export {
  addMissingHeaders,
  composeMessage,
  encodeHeaderValue,
  type MessageParts,
  messageIdFor,
  quotedPrintable,
  rfc5322Date,
} from "./_compose.ts";
export {
  ADDRESS_FIELDS,
  cleanDisplayName,
  type HeaderField,
  joinMessage,
  parseAddressList,
  type PreparedMessage,
  type PrepareOptions,
  prepareMessage,
  qualifyAddressList,
  type SplitMessage,
  splitMessage,
  substitute,
  toCrlf,
} from "./_fields.ts";
export {
  fieldValues,
  hasField,
  headerEnd,
  headerHasEightBit,
  headerSectionOfText,
  headerText,
  MAX_HEADER_BYTES,
  takeField,
} from "./_header.ts";
