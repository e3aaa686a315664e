// deny-without-header (gcore SDK, ABI 0.2.1): answers a local 403 with the body "denied by plugin" unless
// the request has the header named in the configuration ({"header": "x-token"}); a header with an empty
// value counts as missing (the SDK reads both as ""). Without "header" in the configuration, configure fails.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  Context, FilterHeadersStatusValues, log, LogLevelValues, registerRootContext, RootContext, send_http_response,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { configString } from "../../shared/config";

class DenyRoot extends RootContext {
  header: string = "";

  onConfigure(configuration_size: u32): bool {
    if (!super.onConfigure(configuration_size)) return false;
    this.header = configString(this.getConfiguration(), "header");
    if (this.header.length == 0) {
      log(LogLevelValues.error, "deny-without-header: the configuration names no \"header\"");
      return false;
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new Deny(context_id, this);
  }
}

class Deny extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as DenyRoot;
    if (stream_context.headers.request.get(root.header).length > 0) {
      return FilterHeadersStatusValues.Continue;
    }
    send_http_response(403, "denied_by_plugin", String.UTF8.encode("denied by plugin"), []);
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32): RootContext => new DenyRoot(context_id), "deny-without-header");
