// endless-loop (gcore SDK, ABI 0.2.1): never returns from proxy_on_request_headers, so only the host's fuel
// or epoch deadline ends the call. The loop stores to a global each turn so that no optimizer can prove it
// has no effect.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import { Context, FilterHeadersStatusValues, registerRootContext, RootContext } from "@gcoredev/proxy-wasm-sdk-as/assembly";

let turns: u64 = 0;

class LoopRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Loop(context_id, this);
  }
}

class Loop extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    while (true) {
      turns++;
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new LoopRoot(context_id), "endless-loop");
