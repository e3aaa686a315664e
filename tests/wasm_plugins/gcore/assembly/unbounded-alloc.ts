// unbounded-alloc (gcore SDK, ABI 0.2.1): in proxy_on_request_headers allocates 1 MiB buffers and keeps
// them all reachable, so the linear memory grows until the host's memory limit refuses memory.grow; the
// runtime then aborts (a trap). Each buffer is written to, so the pages are really touched.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import { Context, FilterHeadersStatusValues, registerRootContext, RootContext } from "@gcoredev/proxy-wasm-sdk-as/assembly";

const CHUNK_BYTES: i32 = 1 << 20;

// A global holds the buffers, so the collector can free none of them.
let hoard = new Array<ArrayBuffer>();

class AllocRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Alloc(context_id, this);
  }
}

class Alloc extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    while (true) {
      let chunk = new ArrayBuffer(CHUNK_BYTES);
      store<u8>(changetype<usize>(chunk) + <usize>(CHUNK_BYTES - 1), 1);
      hoard.push(chunk);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new AllocRoot(context_id), "unbounded-alloc");
