# The two set-up commands: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# Commands the suite and the demo run besides Python, as command:Debian-package.
SYSTEM_COMMANDS := openssl:openssl ip:iproute2 curl:curl clang:clang bpftool:bpftool tcpdump:tcpdump
# Files the build needs, as path:Debian-package (libbpf's BPF headers; the runtime libbpf1 comes with it).
SYSTEM_FILES := /usr/include/bpf/bpf_helpers.h:libbpf-dev
# The eBPF capture program (DESIGN.md section 5), built from its source; never committed.
BPF_OBJECTS := bpf/capture.bpf.o
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -I/usr/include/$(shell gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
# `make bench` only (issue #7): the load generators and the peers, as command:Debian-package, and the
# `bench` extra (matplotlib, py-spy) in the venv under its own stamp, so `make test`'s stays as it is.
BENCH_COMMANDS := wrk:wrk h2load:nghttp2-client iperf3:iperf3 nginx:nginx stunnel:stunnel4 haproxy:haproxy ss:iproute2
BENCH_STAMP := $(VENV)/.bench-extra-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test system-deps venv bpf protos check-protos bench bench-deps bench-ca bench-discovery bench-lab bench-capture clean

demo: system-deps venv bpf
	$(VENV)/bin/ambient demo

test: system-deps venv bpf check-protos
	$(PY) -m pytest

bpf: $(BPF_OBJECTS)

bpf/%.bpf.o: bpf/%.bpf.c
	clang $(BPF_CFLAGS) -c $< -o $@

venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# Installs through apt only what is missing; needs root for that (CI is root).
system-deps:
	@missing=""; for entry in $(SYSTEM_COMMANDS); do \
	  command -v $${entry%%:*} >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; done; \
	for entry in $(SYSTEM_FILES); do \
	  test -e $${entry%%:*} || missing="$$missing $${entry#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing; install them (apt-get install$$missing) or run as root" >&2; exit 1; fi; \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Protos with a gRPC service get *_pb2_grpc.py stubs too; message-only protos do not.
SERVICE_PROTOS := ca/proto/ca.proto
MESSAGE_PROTOS := mesh/api/workload.proto mesh/api/authorization.proto mesh/api/zds.proto
PROTOC = $(PY) -m grpc_tools.protoc -I .
generate_protos = $(PROTOC) --python_out=$(1) --grpc_python_out=$(1) --pyi_out=$(1) $(SERVICE_PROTOS) && \
	$(PROTOC) --python_out=$(1) --pyi_out=$(1) $(MESSAGE_PROTOS)
# Regenerate the committed protobuf modules (grpcio-tools is pinned in the dev extra).
protos: venv
	$(call generate_protos,.)

# The committed modules must be exactly what their .proto files generate.
check-protos: venv
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(call generate_protos,$$tmp) && \
	for f in $$(cd $$tmp && find . -name '*.py*' -type f); do \
	  cmp -s $$tmp/$$f $$f || { echo "$$f is stale: run 'make protos' and commit" >&2; exit 1; }; done

# The data-path benchmark (bench/README.md): root, one lab, about 4 minutes; not part of `make test`.
# The mesh's byte-code is compiled first, as installing a wheel would: memory is a measured figure,
# and a process that compiles its modules from source (an editable checkout under
# PYTHONDONTWRITEBYTECODE) holds more than one that loads them compiled (1.4 MiB in a ztunnel).
bench: system-deps venv bench-deps bpf
	$(PY) -m compileall -q ambient bpf ca controlplane hbone lab mesh ztunnel
	$(PY) bench/datapath_bench.py

# Installs through apt only what is missing (root). Debian starts the service a package installs
# unless /usr/sbin/policy-rc.d forbids it: where there is none, one that forbids every start is in
# place for the install only, so no system nginx or haproxy starts in the root namespace (the bench
# runs its own, inside the lab).
bench-deps: $(BENCH_STAMP)
	@missing=""; for entry in $(BENCH_COMMANDS); do \
	  command -v $${entry%%:*} >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing; install them (apt-get install$$missing) or run as root" >&2; exit 1; fi; \
	  echo "installing:$$missing"; guard=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; status=$$?; \
	  if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status; \
	fi

$(BENCH_STAMP): | $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	@rm -f $(VENV)/.bench-extra-* && touch $@

bench-ca: venv
	$(PY) bench/ca_issue_rate.py

bench-discovery: venv
	$(PY) bench/discovery_scale.py

bench-lab: system-deps venv
	$(PY) bench/lab_up.py

bench-capture: system-deps venv bpf
	$(PY) bench/capture.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info $(BPF_OBJECTS)
