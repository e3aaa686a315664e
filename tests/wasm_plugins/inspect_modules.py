"""Prints what each built test plugin imports and exports, as JSON (or, with --markdown, the README's table).

Run as `python -m tests.wasm_plugins.inspect_modules [--markdown] [name ...]` after `make wasm-plugins`. It
compiles each module with wasmtime (so a module wasmtime rejects fails here, as the host would) in this
process only: test_build.py runs it as a subprocess, keeping wasmtime out of the test interpreter. Whether a
module has a start section (run by instantiation itself, no export to call) is read from the binary, since
wasmtime does not report it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.wasm_plugins import BUILD_DIR, PLUGINS

# The binary format's section id of the start section (WebAssembly core spec, 5.5.10).
START_SECTION_ID = 8
WASM_HEADER = b"\0asm\x01\0\0\0"


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def has_start_section(data: bytes) -> bool:
    if not data.startswith(WASM_HEADER):
        raise ValueError("not a WebAssembly 1.0 binary")
    at = len(WASM_HEADER)
    while at < len(data):
        section_id = data[at]
        size, at = _leb128(data, at + 1)
        if section_id == START_SECTION_ID:
            return True
        at += size
    return False


def _describe(kind: Any) -> list[Any]:
    import wasmtime

    if isinstance(kind, wasmtime.FuncType):
        return ["func", [str(p) for p in kind.params], [str(r) for r in kind.results]]
    if isinstance(kind, wasmtime.MemoryType):
        return ["memory"]
    if isinstance(kind, wasmtime.GlobalType):
        return ["global"]
    return ["table"]


def inspect(path: Path) -> dict[str, Any]:
    import wasmtime

    module = wasmtime.Module.from_file(wasmtime.Engine(), str(path))
    return {
        "imports": [[i.module, i.name, *_describe(i.type)] for i in module.imports],
        "exports": [[e.name, *_describe(e.type)] for e in module.exports],
        "start_section": has_start_section(path.read_bytes()),
    }


def markdown(report: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, info in report.items():
        by_module: dict[str, list[str]] = {}
        for module, field, *_ in info["imports"]:
            by_module.setdefault(module, []).append(field)
        exports = [e[0] for e in info["exports"]]
        marker = next((e for e in exports if e.startswith("proxy_abi_version_")), "none")
        entry = [e for e in exports if e in ("_start", "_initialize")]
        if info["start_section"]:
            entry.append("start section")
        alloc = [e for e in exports if e in ("malloc", "proxy_on_memory_allocate")]
        callbacks = [e for e in exports if e.startswith("proxy_on_") and e != "proxy_on_memory_allocate"]
        others = [e for e in exports if e not in (marker, *entry, *alloc, *callbacks)]
        lines.append(f"### {name}.wasm")
        lines.append(f"- marker `{marker}`; start-up {', '.join(f'`{e}`' for e in entry) or 'none'}; "
                     f"allocator {', '.join(f'`{e}`' for e in alloc) or 'none'}")
        for module, fields in by_module.items():
            lines.append(f"- imports `{module}`: {', '.join(fields)}")
        lines.append(f"- callbacks ({len(callbacks)}): {', '.join(c.removeprefix('proxy_on_') for c in callbacks)}")
        if others:
            lines.append(f"- other exports: {', '.join(others)}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    as_markdown = "--markdown" in argv
    names = [a for a in argv if not a.startswith("--")] or list(PLUGINS)
    report = {name: inspect(BUILD_DIR / f"{name}.wasm") for name in names}
    print(markdown(report) if as_markdown else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
