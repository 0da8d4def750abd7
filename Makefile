# netagent — `make run` and `make test` install what is missing, then run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := nftables python3-nftables python3-venv iproute2 conntrack iptables \
	containernetworking-plugins qemu-system-x86 busybox-static \
	iputils-ping openssl redis-server redis-tools tcpdump procps haproxy curl nghttp2-client stress-ng
CONFIG ?=
PYTEST_ARGS ?=
# `make bench` times the CLI of this git ref beside this tree's (tests/bench/cli_bench.py):
# main before the CLI's light client (issue 18 part 2)
CLI_BENCH_BEFORE ?= b222542

PROTO := netagent/api/netagent.proto

.PHONY: proto run test test-loaded test-slow test-unit test-datapath test-microvm bench lint deps apt venv guest-image clean

run: deps
	$(PY) -m netagent serve $(if $(CONFIG),--config $(CONFIG))

test: deps guest-image
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not microvm" $(PYTEST_ARGS)

# The same suite with every CPU kept busy by stress-ng (one worker a core): no
# test may depend on the machine being quiet. The load average is printed
# before and after.
test-loaded: deps guest-image
	@stress-ng --cpu $$(nproc) --timeout 3600s --quiet & stress=$$!; \
	trap 'kill $$stress 2>/dev/null; wait $$stress 2>/dev/null' EXIT; \
	sleep 30; echo "load before: $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not microvm" $(PYTEST_ARGS); rc=$$?; \
	echo "load after: $$(cut -d' ' -f1-3 /proc/loadavg)"; exit $$rc

# The slow tier: QEMU guests (marked `microvm`) and tests marked `slow`; CI
# runs it before make test. pytest's exit 5 (nothing selected) is not a failure.
test-slow: deps guest-image
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or microvm" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-unit: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-datapath: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/datapath

test-microvm: deps guest-image
	$(PY) -m pytest -q -p no:cacheprovider tests/microvm $(PYTEST_ARGS)

bench: deps
	$(PY) -m tests.bench.run $(BENCH_ARGS)
	$(PY) -m tests.bench.dns_bench | tee bench-results/dns.json
	$(PY) -m tests.bench.dns_flood_bench | tee bench-results/dns_flood.json
	$(PY) -m tests.bench.forward_bench | tee bench-results/forward.json
	$(PY) -m tests.bench.edge_bench | tee bench-results/edge.json
	$(PY) -m tests.bench.haproxy_bench | tee bench-results/haproxy.json
# issue 24: public URLs through a sandbox's life (no false 502, wake on request)
	$(PY) -m tests.bench.urls_bench | tee bench-results/urls.json
	$(PY) -m tests.bench.reach_bench | tee bench-results/reach.json
	$(PY) -m tests.bench.repair_bench | tee bench-results/repair.json
	$(PY) -m tests.bench.cli_bench --out bench-results/cli.json --before-ref $(CLI_BENCH_BEFORE) $(CLI_BENCH_ARGS)
	$(PY) -m tests.bench.first_payload_bench | tee bench-results/first_payload.json
	$(PY) -m tests.bench.limit_bench | tee bench-results/limits.json
	$(PY) -m tests.bench.flow_kill_bench | tee bench-results/flow_kill.json
	$(PY) -m tests.bench.churn_bench | tee bench-results/churn.json
# issue 12: CPU time per warm allocate, by thread (a load-independent second measure)
	$(PY) -m tests.bench.allocate_cpu --out bench-results/allocate_cpu.json
# issue 16: 100 simulated hosts' publishers on a Redis Cluster, both registry designs (HOSTS_SIM_ARGS=--full: the issue's load)
	$(PY) -m tests.bench.hosts_sim $(HOSTS_SIM_ARGS) | tee bench-results/hosts_sim.json

lint: deps
	$(PY) -m ruff check netagent tests

deps: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c 'import nftables, pyroute2, pydantic'
	touch $@

proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

guest-image: deps
	$(PY) -m tests.testbed.microvm.image

clean:
	rm -rf $(VENV) build *.egg-info
