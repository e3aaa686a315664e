// unbounded-alloc (solo SDK, ABI 0.2.0): in proxy_on_request_headers allocates 1 MiB buffers and keeps
// them all reachable, so the linear memory grows until the host's memory limit refuses memory.grow; the
// runtime then aborts (abort_proc_exit: proxy_log, then wasi_unstable.proc_exit(255)). Each buffer is
// written to, so the pages are really touched.
export * from "@solo-io/proxy-runtime/proxy";
import { Context, FilterHeadersStatusValues, RootContext } from "@solo-io/proxy-runtime";
import { register } from "./lib/support";

const CHUNK_BYTES: i32 = 1 << 20;

// A global holds the buffers, so the collector can free none of them.
let hoard = new Array<ArrayBuffer>();

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
      let chunk = new ArrayBuffer(CHUNK_BYTES);
      store<u8>(changetype<usize>(chunk) + <usize>(CHUNK_BYTES - 1), 1);
      hoard.push(chunk);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

register((context_id: u32) => { return new AllocRoot(context_id) as RootContext; }, "unbounded-alloc");
