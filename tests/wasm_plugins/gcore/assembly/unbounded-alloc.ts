// unbounded-alloc (gcore SDK, ABI 0.2.1): in proxy_on_request_headers allocates 4 MiB blocks from the
// language runtime's allocator (TLSF, `heap.alloc`) and never frees them, so the linear memory grows until
// the host's memory limit refuses memory.grow; the allocator then traps (`unreachable` in TLSF's growMemory,
// not the abort function). Unmanaged blocks, not ArrayBuffers: zero-filling and the incremental
// collector's steps would spend the host's fuel before the memory ran out, and this plugin is for the
// memory limit (endless-loop is for fuel). One byte in each 64 KiB page is written, so the pages are touched.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import { Context, FilterHeadersStatusValues, registerRootContext, RootContext } from "@gcoredev/proxy-wasm-sdk-as/assembly";

const BLOCK_BYTES: usize = 4 << 20;
const PAGE_BYTES: usize = 64 << 10;

class AllocRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Alloc(context_id, this);
  }
}

class Alloc extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    while (true) {
      let block = heap.alloc(BLOCK_BYTES);
      for (let at: usize = 0; at < BLOCK_BYTES; at += PAGE_BYTES) store<u8>(block + at, 1);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new AllocRoot(context_id), "unbounded-alloc");
