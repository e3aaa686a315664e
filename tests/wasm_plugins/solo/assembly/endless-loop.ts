// endless-loop (solo SDK, ABI 0.2.0): never returns from proxy_on_request_headers, so only the host's fuel
// or epoch deadline ends the call. The loop stores to a global each turn so that no optimizer can prove it
// has no effect.
export * from "@solo-io/proxy-runtime/proxy";
import { Context, FilterHeadersStatusValues, RootContext } from "@solo-io/proxy-runtime";
import { register } from "./lib/support";

let turns: u64 = 0;

class LoopRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Loop(context_id, this);
  }
}

class Loop extends Context {
  constructor(context_id: u32, root_context: LoopRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    while (true) {
      turns++;
    }
    return FilterHeadersStatusValues.Continue;
  }
}

register((context_id: u32) => { return new LoopRoot(context_id) as RootContext; }, "endless-loop");
