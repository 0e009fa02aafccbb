# OneProtect contracts: common tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CODEGEN := $(CARGO) run --quiet -p oneprotect-codegen --
TOOLS := .tools
# Where cargo builds: CARGO_TARGET_DIR when set, as cargo itself does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
OPENAPI_SPEC_VALIDATOR_VERSION := 0.9.0
ASYNCAPI_PARSER_VERSION := 3.6.3

conformance: ## The main job: the conformance suite on the embedded default (local target on SQLite, then the agent target)
	$(CARGO) build -p oneprotect-conformance -p oneprotect-agent
	$(TARGET_DIR)/debug/oneprotect-conformance run --target local
	$(TARGET_DIR)/debug/oneprotect-conformance run --target agent --agent-bin $(TARGET_DIR)/debug/oneprotect-agent

.DEFAULT_GOAL := help

.PHONY: help conformance bench generate validate-contracts check-compat contract-diff validate-contracts-external test lint fmt ci agent agent-footprint agent-cross mutants package check-packages

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'

# A second contract, not OneProtect's, proves the codegen is a toolkit (README, "Changing a contract").
BOOKSHELF := --config codegen/tests/bookshelf/codegen.toml

generate: ## Regenerate generated/src from specs/ (and the Bookshelf fixture contract's src/)
	$(CODEGEN) generate
	$(CODEGEN) $(BOOKSHELF) generate

validate-contracts: ## Validate specs/ and fail if generated/ is stale (Rust only; no Python or Node); the same for the Bookshelf fixture contract
	$(CODEGEN) check
	$(CODEGEN) $(BOOKSHELF) check

check-compat: ## Refuse a breaking contract change without a version bump (base: CONTRACT_BASE, else the merge base with main, else the previous commit)
	base=$$(tools/contract-base.sh) && $(CODEGEN) check-compat --base "$$base" --format $(or $(COMPAT_FORMAT),human)

contract-diff: ## Classify every contract change since BASE (default: as check-compat), without judging
	base=$${BASE:-$$(tools/contract-base.sh)} && $(CODEGEN) diff --base "$$base" --format $(or $(COMPAT_FORMAT),human)

$(TOOLS)/venv/bin/openapi-spec-validator:
	python3 -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install --quiet --disable-pip-version-check openapi-spec-validator==$(OPENAPI_SPEC_VALIDATOR_VERSION)

$(TOOLS)/node/node_modules/@asyncapi/parser/package.json:
	npm install --silent --no-audit --no-fund --prefix $(TOOLS)/node @asyncapi/parser@$(ASYNCAPI_PARSER_VERSION)

validate-contracts-external: $(TOOLS)/venv/bin/openapi-spec-validator $(TOOLS)/node/node_modules/@asyncapi/parser/package.json ## Cross-check specs with openapi-spec-validator (PyPI) and the AsyncAPI parser (npm)
	$(TOOLS)/venv/bin/openapi-spec-validator specs/openapi.yaml
	NODE_PATH=$(TOOLS)/node/node_modules node tools/validate-asyncapi.cjs specs/asyncapi.yaml

test: ## Run every test (cargo nextest)
	$(CARGO) nextest run --workspace --no-fail-fast

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings

fmt: ## Format the workspace
	$(CARGO) fmt --all

ci: validate-contracts check-compat validate-contracts-external lint test ## Everything CI runs

agent: ## Build the endpoint agent with the size-optimised profile (target/agent/)
	$(CARGO) build --profile agent -p oneprotect-agent

package: ## Debian packages of the server (release) and the agent (agent profile) with cargo-deb, into $(TARGET_DIR)/debian/
	command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	$(CARGO) deb -p oneprotect-server
	$(CARGO) deb -p oneprotect-agent --profile agent

check-packages: package ## Build the packages, then check their contents, modes, units and maintainer scripts with dpkg-deb
	./tools/check-packages.sh $(TARGET_DIR)/debian

agent-footprint: ## Print the agent's stripped size, RSS after heartbeats and CPU per heartbeat
	./tools/agent-footprint.sh

mutants: ## Mutation testing of the server's security rules (cargo-mutants; about an hour on 2 cores); figures in docs/conformance.md
	./tools/mutants.sh

agent-cross: ## Build the agent for Linux musl/aarch64, Windows and macOS (installs targets and cross tools)
	./tools/agent-cross.sh

# PostgreSQL on this host, over its Unix socket as README recommends for a
# same-host database; BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres measures TCP (with TLS).
BENCH_POSTGRES_URL ?= postgres://postgres@%2Fvar%2Frun%2Fpostgresql/postgres

bench: ## Loopback benchmark on SQLite and PostgreSQL (10,000 agents); writes target/bench/results.{md,json}
	$(CARGO) build --release --quiet -p oneprotect-conformance --bin oneprotect-loadgen
	$(TARGET_DIR)/release/oneprotect-loadgen --agents 10000 --concurrency 64 --seconds 10 \
	  --backend sqlite --backend '$(BENCH_POSTGRES_URL)' --events --output $(TARGET_DIR)/bench
