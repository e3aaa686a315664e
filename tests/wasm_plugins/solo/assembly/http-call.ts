// http-call (solo SDK, ABI 0.2.0): on request headers, calls another mesh service with proxy_http_call
// (GET <path>, upstream and :authority from the configuration: {"upstream": "outbound|80||authz.mesh.svc.cluster.local",
// "authority": "authz.mesh.svc.cluster.local", "path": "/check"}; the original request's path goes along in
// `x-original-path`) and pauses the request. On proxy_on_http_call_response it continues the request if the
// answer's :status is 200, else answers a local 403 "denied by authz service". A failed call (the host
// refusing it) answers 503 at once. Without "upstream" in the configuration, configure fails.
export * from "@solo-io/proxy-runtime/proxy";
import {
  Context, continue_request, FilterHeadersStatusValues, GrpcStatusValues, HeaderPair, log, LogLevelValues, RootContext,
  send_local_response, stream_context, WasmResultValues,
} from "@solo-io/proxy-runtime";
import { configString } from "../../shared/config";
import { pluginConfiguration, property, register } from "./lib/support";

// How long the host may take to answer the call before it reports a failure (the response callback with
// no headers, which this plugin reads as a denial).
const CALL_TIMEOUT_MILLISECONDS: u32 = 5000;

class HttpCallRoot extends RootContext {
  upstream: string = "";
  authority: string = "";
  path: string = "";

  onConfigure(configuration_size: u32): bool {
    let config = pluginConfiguration(configuration_size);
    this.upstream = configString(config, "upstream");
    this.authority = configString(config, "authority");
    this.path = configString(config, "path");
    if (this.authority.length == 0) this.authority = this.upstream;
    if (this.path.length == 0) this.path = "/check";
    if (this.upstream.length == 0) {
      log(LogLevelValues.error, "http-call: the configuration names no \"upstream\"");
      return false;
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new HttpCall(context_id, this);
  }
}

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function onCheckResponse(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  let status = stream_context.headers.http_callback.get(":status");
  if (status == "200") {
    continue_request();
    return;
  }
  // An if, not a conditional expression: AssemblyScript 0.14 releases `status` twice when it is one arm
  // of a ternary whose other arm is a literal (a trap in its reference-counting runtime).
  let answered = "nothing";
  if (status.length > 0) answered = status;
  log(LogLevelValues.info, "http-call: the check answered " + answered);
  send_local_response(403, "denied_by_authz_service", String.UTF8.encode("denied by authz service"), [],
    GrpcStatusValues.InvalidCode);
}

class HttpCall extends Context {
  constructor(context_id: u32, root_context: HttpCallRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as HttpCallRoot;
    let callHeaders: HeaderPair[] = [
      pair(":method", "GET"),
      pair(":path", root.path),
      pair(":authority", root.authority),
      pair("x-original-path", property("request.path")),
    ];
    let result = root.httpCall(
      root.upstream, callHeaders, new ArrayBuffer(0), [], CALL_TIMEOUT_MILLISECONDS, this, onCheckResponse);
    if (result != WasmResultValues.Ok) {
      log(LogLevelValues.error, "http-call: proxy_http_call failed: " + result.toString());
      send_local_response(503, "http_call_failed", String.UTF8.encode("authz service call failed"), [],
        GrpcStatusValues.InvalidCode);
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

register((context_id: u32) => { return new HttpCallRoot(context_id) as RootContext; }, "http-call");
