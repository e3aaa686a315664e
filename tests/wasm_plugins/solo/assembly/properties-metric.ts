// properties-metric (solo SDK, ABI 0.2.0): per request reads the properties request.path (dotted, as
// AssemblyScript users write it), source.principal (NUL-separated, as the Rust and Go SDKs send paths) and
// plugin_root_id, increments the counter `wasm_requests_total` (defined once, in proxy_on_configure), and
// answers with the response header `x-wasm-properties: path=<..>;principal=<..>;root_id=<..>`.
// A property the host does not have reads as "" (lib/support.ts; the SDK's own get_property would abort).
export * from "@solo-io/proxy-runtime/proxy";
import { Context, Counter, FilterHeadersStatusValues, RootContext, stream_context } from "@solo-io/proxy-runtime";
import { property, register } from "./lib/support";

class PropertiesRoot extends RootContext {
  requests: Counter | null = null;

  onConfigure(configuration_size: u32): bool {
    // Defined here rather than per request: the host keeps one metric per name and VM.
    if (this.requests == null) this.requests = new Counter("wasm_requests_total");
    return true;
  }

  createContext(context_id: u32): Context {
    return new Properties(context_id, this);
  }
}

class Properties extends Context {
  seen: string = "";

  constructor(context_id: u32, root_context: PropertiesRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as PropertiesRoot;
    this.seen = "path=" + property("request.path")
      + ";principal=" + property("source\0principal")
      + ";root_id=" + property("plugin_root_id");
    let requests = root.requests;
    if (requests != null) requests.increment(1);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-wasm-properties", this.seen);
    return FilterHeadersStatusValues.Continue;
  }
}

register((context_id: u32) => { return new PropertiesRoot(context_id) as RootContext; }, "properties-metric");
