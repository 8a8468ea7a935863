# slotd — deployment slots for Nomad and Consul. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
STACK_DIR ?= $(HOME)/.cache/slotd/stack
export STACK_DIR
export CHECKPOINT_DISABLE := 1
export GOFLAGS := -buildvcs=false
E2E_TIMEOUT ?= 75m
FUZZTIME ?= 60s

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/slotd and the test app
	$(GO) build -o $(BIN)/slotd ./cmd/slotd
	$(GO) build -o $(BIN)/testapp ./e2e/testapp

.PHONY: stack
stack: ## build Consul 1.14.8, Nomad 1.6.1, Fabio 1.6.3 and Prometheus 3.16.0 into $(STACK_DIR) (reused when present)
	./scripts/install-stack.sh

.PHONY: test
test: stack ## run every test: unit, e2e against the real stack (built if absent), fuzz targets 60s each
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -p 1 -parallel 6 ./...
	./scripts/fuzz.sh $(FUZZTIME)

.PHONY: test-unit
test-unit: ## run the unit tests only (no agents)
	$(GO) test -count=1 -short ./...

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 60s)
	./scripts/fuzz.sh $(FUZZTIME)

.PHONY: bench
bench: stack build ## run the benchmarks against the real stack and print the figures
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./e2e/...

.PHONY: lint
lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

.PHONY: demo
demo: stack build ## run the demo: the stack and slotd on loopback, v1 in production, v2 in staging
	$(GO) run ./e2e/demo

.PHONY: clean
clean: ## remove build output (the stack cache stays)
	rm -rf $(BIN)
