# kxdp: build, test, benchmark and demo entry points. CI runs `make test` (see .ci/run).
#
# Everything goes through cargo, so CARGO_TARGET_DIR and the toolchain in the environment apply.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
PERF_OUT ?= perf/out
# Extra flags for the full bench, e.g. `make bench-pipeline BENCH_FLAGS="--services 10,10000"`.
BENCH_FLAGS ?=
PERF_RUN := $(CARGO) run --release --quiet -p kxdp-perf --bin

.PHONY: deps build test fmt fmt-check clippy unit-test bench-smoke bench-pipeline demo fuzz fuzz-smoke fuzz-seeds

deps:
	scripts/install-deps.sh

build:
	$(CARGO) build --workspace --all-targets

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Ends with one plain "tests: N passed, N failed" line summing every cargo test binary.
unit-test:
	log=$$(mktemp); $(CARGO) test --workspace 2>&1 | tee $$log; \
	awk '/^test result:/ {passed += $$4; failed += $$6} END {printf "tests: %d passed, %d failed\n", passed, failed}' $$log; \
	rm -f $$log

# The pipeline bench at smoke sizes, debug build: proves every bench path still runs and every
# verdict is still right, in seconds. Its numbers mean nothing.
bench-smoke:
	$(CARGO) run --quiet -p kxdp-perf --bin kxdp-bench-pipeline -- --quick --no-pin >/dev/null

# The fuzzer on the stable toolchain: `--sanitizer none` keeps cargo-fuzz to stable -C flags.
# Seeds are the fixture table's real frames (see dataplane/tests/datapath_fixtures.rs).
FUZZ_SECONDS ?= 300
fuzz-seeds:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	KXDP_WRITE_FUZZ_SEEDS=$(CURDIR)/fuzz/seeds $(CARGO) test --quiet -p kxdp-dataplane --test datapath_fixtures >/dev/null

fuzz: fuzz-seeds
	mkdir -p fuzz/corpus/parse_and_process
	cd fuzz && $(CARGO) fuzz run --sanitizer none parse_and_process corpus/parse_and_process seeds \
		-- -max_total_time=$(FUZZ_SECONDS)

# Thirty seconds of fuzzing with the log kept out of the way; a crash prints the log's tail.
fuzz-smoke: fuzz-seeds
	mkdir -p fuzz/corpus/parse_and_process
	cd fuzz && $(CARGO) fuzz run --sanitizer none parse_and_process corpus/parse_and_process seeds \
		-- -max_total_time=30 >fuzz-smoke.log 2>&1 || { tail -40 fuzz-smoke.log; exit 1; }
	grep -E '^Done [0-9]+ runs' fuzz/fuzz-smoke.log | sed 's/^/fuzz: /'

# Cheapest checks first, so a formatting slip fails in seconds rather than after the build.
test: deps
	$(MAKE) --no-print-directory fmt-check
	$(MAKE) --no-print-directory clippy
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory unit-test

# The full matrix of DESIGN.md §6.1 in a release build; the report lands in $(PERF_OUT)/pipeline.md.
bench-pipeline:
	mkdir -p $(PERF_OUT)
	$(CARGO) build --release -p kxdp-perf --bins
	$(PERF_RUN) kxdp-bench-pipeline -- --output $(PERF_OUT)/pipeline.md $(BENCH_FLAGS) >/dev/null
	cat $(PERF_OUT)/pipeline.md

# Placeholder until the netns demo exists: the bench at smoke sizes, then a generated capture
# replayed through the pipeline, with the first packets shown before and after translation.
demo: deps
	mkdir -p $(PERF_OUT)
	$(CARGO) build --release -p kxdp-perf --bins
	$(PERF_RUN) kxdp-bench-pipeline -- --quick
	$(PERF_RUN) kxdp-pcap-gen -- --output $(PERF_OUT)/demo.pcap --services 1000 --flows 5000 --packets 50000
	$(PERF_RUN) kxdp-bench-pipeline -- --pcap $(PERF_OUT)/demo.pcap --pcap-services 1000 \
		--pcap-output $(PERF_OUT)/demo-translated.pcap
	if command -v tcpdump >/dev/null; then \
		echo; echo "First packets as captured (client -> ClusterIP):"; \
		tcpdump -nn -r $(PERF_OUT)/demo.pcap -c 6 2>/dev/null; \
		echo; echo "The same packets after the pipeline (client -> backend, TTL - 1, new MACs):"; \
		tcpdump -nn -e -r $(PERF_OUT)/demo-translated.pcap -c 6 2>/dev/null; \
	fi
