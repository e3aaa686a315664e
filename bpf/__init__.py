"""eBPF traffic capture (DESIGN.md section 5): `capture.bpf.c`, the sk_lookup program of one pod,
built by `make bpf`; `libbpf`, a ctypes binding over the system's libbpf.so.1; `capture`, one pod's
loaded program and maps, attached, pinned and adopted."""
