// add-header (solo SDK, ABI 0.2.0): adds the request header named in the configuration
// ({"header": "x-added", "value": "..."}) and a response header `x-plugin: <plugin_root_id>`
// ("add-header" when the host gives no root id). A configuration without "header" fails proxy_on_configure.
export * from "@solo-io/proxy-runtime/proxy";
import { Context, FilterHeadersStatusValues, log, LogLevelValues, RootContext, stream_context } from "@solo-io/proxy-runtime";
import { configString } from "../../shared/config";
import { pluginConfiguration, property, register } from "./lib/support";

class AddHeaderRoot extends RootContext {
  header: string = "";
  value: string = "";
  rootId: string = "add-header";

  onConfigure(configuration_size: u32): bool {
    let config = pluginConfiguration(configuration_size);
    this.header = configString(config, "header");
    this.value = configString(config, "value");
    let rootId = property("plugin_root_id");
    if (rootId.length > 0) this.rootId = rootId;
    if (this.header.length == 0) {
      log(LogLevelValues.error, "add-header: the configuration names no \"header\"");
      return false;
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new AddHeader(context_id, this);
  }
}

class AddHeader extends Context {
  constructor(context_id: u32, root_context: AddHeaderRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as AddHeaderRoot;
    stream_context.headers.request.add(root.header, root.value);
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as AddHeaderRoot;
    stream_context.headers.response.add("x-plugin", root.rootId);
    return FilterHeadersStatusValues.Continue;
  }
}

register((context_id: u32) => { return new AddHeaderRoot(context_id) as RootContext; }, "add-header");
