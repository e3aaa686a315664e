// trap (gcore SDK, ABI 0.2.1): executes `unreachable` in proxy_on_request_headers: a Wasm trap, which the
// host must turn into the plugin's failStrategy and a rebuilt VM.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import { Context, FilterHeadersStatusValues, registerRootContext, RootContext } from "@gcoredev/proxy-wasm-sdk-as/assembly";

class TrapRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Trap(context_id, this);
  }
}

class Trap extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    unreachable();
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new TrapRoot(context_id), "trap");
