// The plugins' configuration: a flat JSON object of string values, e.g. {"header": "x-added", "value": "v"},
// which is how Istio hands a WasmPlugin's `pluginConfig` to proxy_on_configure. Neither SDK parses JSON and
// the two AssemblyScript compilers (0.14 and 0.28) share no JSON library, so this reads just that shape with
// String methods both compilers have. A key that is missing, or not a string, reads as "".

// Returns the string value of `key` in the flat JSON object `json`, with \" \\ \/ \n \t escapes undone.
export function configString(json: string, key: string): string {
  let quoted = "\"" + key + "\"";
  let at = json.indexOf(quoted);
  while (at >= 0) {
    let i = skipSpace(json, at + quoted.length);
    if (i < json.length && json.charAt(i) == ":") {
      i = skipSpace(json, i + 1);
      if (i < json.length && json.charAt(i) == "\"") {
        return readString(json, i + 1);
      }
      return "";
    }
    // The text matched inside a value (e.g. "header" as a value); look further.
    at = json.indexOf(quoted, at + 1);
  }
  return "";
}

function skipSpace(s: string, i: i32): i32 {
  while (i < s.length) {
    let c = s.charAt(i);
    if (c != " " && c != "\n" && c != "\r" && c != "\t") break;
    i++;
  }
  return i;
}

function readString(s: string, i: i32): string {
  let out = "";
  while (i < s.length) {
    let c = s.charAt(i);
    if (c == "\"") return out;
    if (c == "\\" && i + 1 < s.length) {
      i++;
      let e = s.charAt(i);
      if (e == "n") out += "\n";
      else if (e == "t") out += "\t";
      else out += e;
    } else {
      out += c;
    }
    i++;
  }
  // Unterminated: not a string value.
  return "";
}
