// http-call (gcore SDK, ABI 0.2.1): on request headers, calls another mesh service with proxy_http_call
// (GET <path>, upstream and :authority from the configuration: {"upstream": "outbound|80||authz.mesh.svc.cluster.local",
// "authority": "authz.mesh.svc.cluster.local", "path": "/check"}; the original request's path goes along in
// `x-original-path`) and pauses the request. On proxy_on_http_call_response it continues the request if the
// answer's :status is 200, else answers a local 403 "denied by authz service". A failed call (the host
// refusing it) answers 503 at once. Without "upstream" in the configuration, configure fails.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  BaseContext, Context, continue_request, FilterHeadersStatusValues, get_property, log, LogLevelValues,
  makeHeaderPair, registerRootContext, RootContext, send_http_response, stream_context, WasmResultValues,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { configString } from "../../shared/config";

// How long the host may take to answer the call before it reports a failure (the response callback with
// no headers, which this plugin reads as a denial).
const CALL_TIMEOUT_MILLISECONDS: u32 = 5000;

class HttpCallRoot extends RootContext {
  upstream: string = "";
  authority: string = "";
  path: string = "";

  onConfigure(configuration_size: u32): bool {
    if (!super.onConfigure(configuration_size)) return false;
    let config = this.getConfiguration();
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

function onCheckResponse(origin: BaseContext, headers: u32, body_size: usize, trailers: u32): void {
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
  send_http_response(403, "denied_by_authz_service", String.UTF8.encode("denied by authz service"), []);
}

class HttpCall extends Context {
  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as HttpCallRoot;
    let callHeaders = [
      makeHeaderPair(":method", "GET"),
      makeHeaderPair(":path", root.path),
      makeHeaderPair(":authority", root.authority),
      makeHeaderPair("x-original-path", String.UTF8.decode(get_property("request.path"))),
    ];
    let result = root.httpCall(
      root.upstream, callHeaders, new ArrayBuffer(0), [], CALL_TIMEOUT_MILLISECONDS, this, onCheckResponse);
    if (result != WasmResultValues.Ok) {
      log(LogLevelValues.error, "http-call: proxy_http_call failed: " + result.toString());
      send_http_response(503, "http_call_failed", String.UTF8.encode("authz service call failed"), []);
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32): RootContext => new HttpCallRoot(context_id), "http-call");
