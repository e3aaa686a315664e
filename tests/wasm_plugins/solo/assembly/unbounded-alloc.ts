// unbounded-alloc (solo SDK, ABI 0.2.0): in proxy_on_request_headers allocates 4 MiB blocks from the
// language runtime's allocator (TLSF, `__alloc`) and never releases them, so the linear memory grows until
// the host's memory limit refuses memory.grow; the allocator then traps (`unreachable` in TLSF's growMemory,
// not the abort function). Raw blocks, not `new ArrayBuffer`: this compiler
// zero-fills those with a loop, which would spend the host's fuel before the memory ran out, and this
// plugin is for the memory limit (endless-loop is for fuel). One byte in each 64 KiB page is written, so
// the pages are touched.
export * from "@solo-io/proxy-runtime/proxy";
import { Context, FilterHeadersStatusValues, RootContext } from "@solo-io/proxy-runtime";
import { register } from "./lib/support";

const BLOCK_BYTES: usize = 4 << 20;
const PAGE_BYTES: usize = 64 << 10;

class AllocRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Alloc(context_id, this);
  }
}

class Alloc extends Context {
  constructor(context_id: u32, root_context: AllocRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    while (true) {
      let block = __alloc(BLOCK_BYTES, idof<ArrayBuffer>());
      for (let at: usize = 0; at < BLOCK_BYTES; at += PAGE_BYTES) store<u8>(block + at, 1);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

register((context_id: u32) => { return new AllocRoot(context_id) as RootContext; }, "unbounded-alloc");
