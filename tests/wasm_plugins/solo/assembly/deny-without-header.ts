// deny-without-header (solo SDK, ABI 0.2.0): answers a local 403 with the body "denied by plugin" unless
// the request has the header named in the configuration ({"header": "x-token"}); a header with an empty
// value counts as missing (the SDK reads both as ""). Without "header" in the configuration, configure fails.
export * from "@solo-io/proxy-runtime/proxy";
import {
  Context, FilterHeadersStatusValues, GrpcStatusValues, log, LogLevelValues, RootContext, send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";
import { configString } from "../../shared/config";
import { pluginConfiguration, register } from "./lib/support";

class DenyRoot extends RootContext {
  header: string = "";

  onConfigure(configuration_size: u32): bool {
    this.header = configString(pluginConfiguration(configuration_size), "header");
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
  constructor(context_id: u32, root_context: DenyRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as DenyRoot;
    if (stream_context.headers.request.get(root.header).length > 0) {
      return FilterHeadersStatusValues.Continue;
    }
    send_local_response(403, "denied_by_plugin", String.UTF8.encode("denied by plugin"), [], GrpcStatusValues.InvalidCode);
    return FilterHeadersStatusValues.StopIteration;
  }
}

register((context_id: u32) => { return new DenyRoot(context_id) as RootContext; }, "deny-without-header");
