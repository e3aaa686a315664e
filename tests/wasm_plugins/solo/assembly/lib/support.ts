// What the solo plugins need that @solo-io/proxy-runtime 0.1.8 gets wrong, written with the SDK's own
// bindings (its imports, malloc/free and get_buffer_bytes), so the modules stay plain SDK builds:
// - RootContext.onConfigure passes the configuration's size where the ABI wants a pointer for the size
//   (proxy_get_buffer_bytes' 5th argument), so the host writes 4 bytes at that small address and the SDK
//   then reads a size left by an earlier call: pluginConfiguration() reads it the ABI's way instead;
// - get_property throws (and aborts the VM) on NotFound: property() answers "" instead.
// Both SDKs name the root context by the plugin_root_id property; the solo SDK refuses a root id it was
// not told, so register() registers the factory under "" and the plugin's own name.
import { BufferTypeValues, get_buffer_bytes, registerRootContext, RootContext, WasmResultValues } from "@solo-io/proxy-runtime/runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

export function pluginConfiguration(configuration_size: u32): string {
  if (configuration_size == 0) return "";
  return String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
}

// The out-parameters of proxy_get_property: the host stores the pointer it got from malloc and the size.
class PropertyValue {
  data: usize = 0;
  size: usize = 0;
}

export function property(path: string): string {
  let out = new PropertyValue();
  let name = String.UTF8.encode(path);
  let result = imports.proxy_get_property(changetype<usize>(name), name.byteLength,
    changetype<usize>(out) + offsetof<PropertyValue>("data"), changetype<usize>(out) + offsetof<PropertyValue>("size"));
  if (result != WasmResultValues.Ok || out.size == 0) return "";
  // malloc handed the host a retained ArrayBuffer of exactly `size` bytes; the local takes it over.
  let value = changetype<ArrayBuffer>(out.data);
  free(out.data);
  return String.UTF8.decode(value);
}

export function register(factory: (context_id: u32) => RootContext, name: string): void {
  registerRootContext(factory, "");
  registerRootContext(factory, name);
}
