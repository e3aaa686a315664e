// add-header (gcore SDK, ABI 0.2.1): adds the request header named in the configuration
// ({"header": "x-added", "value": "..."}) and a response header `x-plugin: <plugin_root_id>`
// ("add-header" when the host gives no root id). A configuration without "header" fails proxy_on_configure.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  Context, FilterHeadersStatusValues, get_property, log, LogLevelValues, registerRootContext, RootContext,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { configString } from "../../shared/config";

class AddHeaderRoot extends RootContext {
  header: string = "";
  value: string = "";
  rootId: string = "add-header";

  onConfigure(configuration_size: u32): bool {
    if (!super.onConfigure(configuration_size)) return false;
    this.header = configString(this.getConfiguration(), "header");
    this.value = configString(this.getConfiguration(), "value");
    let rootId = String.UTF8.decode(get_property("plugin_root_id"));
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

registerRootContext((context_id: u32): RootContext => new AddHeaderRoot(context_id), "add-header");
