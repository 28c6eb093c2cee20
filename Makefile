# kuberelay Makefile. Targets follow kubebuilder's vocabulary.
SHELL := /usr/bin/env bash -o pipefail
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
GO      ?= go
# Test peers (smtp-sink, smtp-source from postfix; swaks) live in /usr/sbin on Debian.
export PATH := $(PATH):/usr/sbin:/usr/lib/postfix/sbin

.PHONY: all
all: build

##@ Development

.PHONY: fmt
fmt: ## Format the code.
	$(GO) fmt ./...

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: test
test: fmt-check vet ## Run every test (needs postfix and swaks: see .ci/run).
	$(GO) test -race -count=1 ./...

.PHONY: fmt-check
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on: $$out"; exit 1; fi

##@ Build

.PHONY: build
build: ## Build the relay binary into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/relay ./relay/cmd/relay

.PHONY: run
run: ## Run a relay locally on an embedded default configuration, delivering to a local mail capture.
	$(GO) run ./hack/run-relay

##@ Benchmarks

.PHONY: bench-relay
bench-relay: build ## Compare relayed and direct delivery rates with smtp-source and smtp-sink.
	$(GO) run ./hack/bench-relay -relay bin/relay

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
