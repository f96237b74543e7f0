# The two commands of the README's quick start:
#   make demo   analyse a bundled sample capture and print the report
#   make test   the whole test suite (what CI runs: .ci/run)
# Both install the Debian packages they need when missing (as root; otherwise they print
# the apt-get line).

CARGO ?= cargo
DEMO  ?= captures/demo.pcap

# libpcap-dev: the pcap crate links libpcap. nginx, haproxy: the live end-to-end tests put
# real gateways in front of the project's faulty backend. tcpdump: reading captures back in
# the tests.
BUILD_DEPS := libpcap-dev pkg-config
TEST_DEPS  := $(BUILD_DEPS) nginx haproxy tcpdump

.PHONY: demo test lint deps-build deps-test captures bench

demo: deps-build
	$(CARGO) build --release --quiet --bin gatescope
	./target/release/gatescope analyze $(DEMO) || [ $$? -eq 1 ]

test: deps-test lint
	$(CARGO) test --release --all-targets
	$(CARGO) test --release --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

deps-build:
	@scripts/ensure-deps.sh $(BUILD_DEPS)

deps-test:
	@scripts/ensure-deps.sh $(TEST_DEPS)

# Regenerate the bundled sample captures (deterministic).
captures:
	$(CARGO) run --release --quiet --bin gatescope-gen -- samples captures

bench: deps-build
	$(CARGO) bench --bench pipeline
