# netagent — `make run` and `make test` install what is missing, then run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := nftables python3-nftables python3-venv iproute2 conntrack iptables \
	containernetworking-plugins qemu-system-x86 busybox-static \
	iputils-ping openssl redis-server redis-tools tcpdump procps haproxy curl nghttp2-client stress-ng iperf3 socat \
	prometheus systemd python3-yaml python3-pip python3-cryptography pebble
CONFIG ?=
PYTEST_ARGS ?=
# `make bench` times the CLI of this git ref beside this tree's (tests/bench/cli_bench.py):
# main before the CLI's light client (issue 18 part 2)
CLI_BENCH_BEFORE ?= b222542
# `make bench` measures the idle agent of this git ref beside this tree's (tests/bench/idle_bench.py):
# main before issue 25's idle work
IDLE_BENCH_BEFORE ?= 8a7d926

PROTO := netagent/api/netagent.proto

.PHONY: wheel install uninstall proto run test test-loaded test-slow test-unit test-datapath test-microvm bench lint deps apt venv guest-image clean

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
# issue 27: a new HAProxy process (reload, restart) to correct routing at 50,000 records, and the map files' write cost
	$(PY) -m tests.bench.edge_reload_bench | tee bench-results/edge_reload.json
# issue 24: public URLs through a sandbox's life (no false 502, wake on request)
	$(PY) -m tests.bench.urls_bench | tee bench-results/urls.json
	$(PY) -m tests.bench.reach_bench | tee bench-results/reach.json
	$(PY) -m tests.bench.repair_bench | tee bench-results/repair.json
# issue 25: the idle agent's CPU from /proc, 2,000 sandboxes over gRPC, 30 s windows from 30 s after the last allocate
	$(PY) -m tests.bench.idle_bench --before-ref $(IDLE_BENCH_BEFORE) $(IDLE_BENCH_ARGS) | tee bench-results/idle.json
	$(PY) -m tests.bench.cli_bench --out bench-results/cli.json --before-ref $(CLI_BENCH_BEFORE) $(CLI_BENCH_ARGS)
	$(PY) -m tests.bench.first_payload_bench | tee bench-results/first_payload.json
# issue 23: request interception (added latency, intercepted req/s on one core, unsteered flows)
	$(PY) -m tests.bench.intercept_bench | tee bench-results/intercept.json
	$(PY) -m tests.bench.limit_bench | tee bench-results/limits.json
	$(PY) -m tests.bench.flow_kill_bench | tee bench-results/flow_kill.json
	$(PY) -m tests.bench.churn_bench | tee bench-results/churn.json
# issue 12: CPU time per warm allocate, by thread (a load-independent second measure)
	$(PY) -m tests.bench.allocate_cpu --out bench-results/allocate_cpu.json
# issue 16: 100 simulated hosts' publishers on a Redis Cluster, both registry designs (HOSTS_SIM_ARGS=--full: the issue's load)
	$(PY) -m tests.bench.hosts_sim $(HOSTS_SIM_ARGS) | tee bench-results/hosts_sim.json
# issue 23: the connection log at 2,000 sandboxes and 1,000 new connections/s (FLOW_LOG_ARGS="--sandboxes 500": a smaller host)
	$(PY) -m tests.bench.flow_log_bench $(FLOW_LOG_ARGS) | tee bench-results/flow_log.json

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

# ---- install on a host (docs/operations.md, "A first host") -------------------
# `make install` builds the wheel, installs it into a venv at $(PREFIX)/.venv (with
# the system site packages, for python3-nftables) and puts the units, the example
# configs and the alert rules in place. It never starts, stops or reloads anything,
# so it never touches a running host's ruleset. DESTDIR stages it under a scratch
# root (the venv's scripts then name $(PREFIX), not $(DESTDIR)$(PREFIX)).
DESTDIR ?=
PREFIX ?= /opt/netagent
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
BINDIR ?= /usr/local/bin
WHEEL_DIR ?= dist
SYSTEM_PYTHON ?= /usr/bin/python3
INSTALL_VENV = $(DESTDIR)$(PREFIX)/.venv
UNITS := netagent.service netagent-edge-haproxy.service netagent-edge.service

# From a clean build directory: a stale build/lib would carry deleted files into the wheel.
wheel:
	rm -rf build $(WHEEL_DIR)/netagent-*.whl
	$(SYSTEM_PYTHON) -m pip wheel . --no-deps -q -w $(WHEEL_DIR)

install: wheel
	test -x $(INSTALL_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/python -m pip install -q $(WHEEL_DIR)/netagent-*.whl
# the same version number again (an upgrade from a newer checkout): replace the package itself
	$(INSTALL_VENV)/bin/python -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/netagent-*.whl
	$(if $(DESTDIR),grep -rlI -- '$(INSTALL_VENV)' $(INSTALL_VENV)/bin | xargs -r sed -i 's|$(INSTALL_VENV)|$(PREFIX)/.venv|g')
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/netagent $(DESTDIR)$(SYSCONFDIR)/netagent-edge \
		$(DESTDIR)$(PREFIX)/share $(DESTDIR)$(PREFIX)/docs
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/docs/
	install -d -m 0755 $(DESTDIR)$(BINDIR)
	ln -sfn $(PREFIX)/.venv/bin/netagent $(DESTDIR)$(BINDIR)/netagent
	for u in $(UNITS); do install -m 0644 netagent/systemd/$$u $(DESTDIR)$(UNITDIR)/$$u; done
# the operator's own configs are never overwritten (an upgrade keeps them)
	test -e $(DESTDIR)$(SYSCONFDIR)/netagent/netagent.toml || \
		install -m 0644 netagent/systemd/netagent.toml.example $(DESTDIR)$(SYSCONFDIR)/netagent/netagent.toml
	test -e $(DESTDIR)$(SYSCONFDIR)/netagent-edge/edge.env || \
		install -m 0644 netagent/systemd/edge.env.example $(DESTDIR)$(SYSCONFDIR)/netagent-edge/edge.env
	install -m 0644 netagent/systemd/netagent.toml.example netagent/systemd/edge.env.example \
		netagent/ops/alerts.yml netagent/ops/dashboard.json $(DESTDIR)$(PREFIX)/share/

# Removes what install put in place; state (/var/lib/netagent*), the configs in
# $(SYSCONFDIR) and the datapath stay (stop the units and run `netagent teardown` first
# to remove the datapath: docs/operations.md, "Removing netagent").
uninstall:
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
	if [ "$$(readlink $(DESTDIR)$(BINDIR)/netagent)" = "$(PREFIX)/.venv/bin/netagent" ]; then rm -f $(DESTDIR)$(BINDIR)/netagent; fi
	rm -rf $(INSTALL_VENV) $(DESTDIR)$(PREFIX)/share $(DESTDIR)$(PREFIX)/docs
	-rmdir $(DESTDIR)$(PREFIX)

proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

guest-image: deps
	$(PY) -m tests.testbed.microvm.image

clean:
	rm -rf $(VENV) build dist *.egg-info
