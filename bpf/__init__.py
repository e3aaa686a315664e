"""The node agent and the eBPF sk_lookup traffic capture (DESIGN.md section 5). Not built yet."""
