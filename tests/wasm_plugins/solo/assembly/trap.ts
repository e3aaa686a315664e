// trap (solo SDK, ABI 0.2.0): throws in proxy_on_request_headers. AssemblyScript turns `throw` into the
// abort function, here the SDK's abort_proc_exit: proxy_log at critical, then wasi_unstable.proc_exit(255)
// (and `unreachable` should proc_exit return). The host must treat the exit like a trap: failStrategy, and
// a rebuilt VM. (trap-gcore.wasm executes `unreachable` directly.)
export * from "@solo-io/proxy-runtime/proxy";
import { Context, FilterHeadersStatusValues, RootContext } from "@solo-io/proxy-runtime";
import { register } from "./lib/support";

class TrapRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Trap(context_id, this);
  }
}

class Trap extends Context {
  constructor(context_id: u32, root_context: TrapRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    throw new Error("the trap plugin traps");
  }
}

register((context_id: u32) => { return new TrapRoot(context_id) as RootContext; }, "trap");
