"""The opt-in L7 proxy: policy, routing and proxy-wasm plugins (DESIGN.md section 8). Not built yet."""
