/**
 * A DKIM signing thread: builds its own `DkimSigner` from the options the pool sends, then signs the
 * messages it is handed, one at a time, and sends the signed bytes back (transferred, not copied).
 *
 * Owns: the worker side of the pool protocol (pool.ts documents it).
 * Invariant: every request gets exactly one reply with its id, `signed` or `error`.
 */
import type { PoolReply, PoolRequest } from "./pool.ts";
import { DkimSigner } from "./signer.ts";

declare const self: Worker;

let signer: DkimSigner | undefined;

function post(reply: PoolReply, transfer: ArrayBuffer[] = []): void {
  self.postMessage(reply, transfer);
}

self.onmessage = (event: MessageEvent<PoolRequest>) => {
  const req = event.data;
  if (req.type === "init") {
    try {
      signer = DkimSigner.create(req.options);
      post({ type: "ready" });
    } catch (err) {
      post({ type: "failed", message: err instanceof Error ? err.message : String(err) });
    }
    return;
  }
  try {
    if (!signer) throw new Error("DKIM worker used before init");
    const signed = signer.sign(req.message, req.nowMs);
    post({ type: "signed", id: req.id, signed }, [signed.buffer as ArrayBuffer]);
  } catch (err) {
    post({ type: "error", id: req.id, message: err instanceof Error ? err.message : String(err) });
  }
};
