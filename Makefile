# kuberelay Makefile. Targets follow kubebuilder's vocabulary.
SHELL := /usr/bin/env bash -o pipefail
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
GO      ?= go
# Every binary, tool and go vet uses these settings, as do the tests that build a
# binary (internal/gobuild): go's build cache keys each compiled package by them, so one
# set means each dependency is compiled once. go test -race needs cgo and is the only
# other set.
GOBUILDENV   := CGO_ENABLED=0
GOBUILDFLAGS := -trimpath
# Test peers (smtp-sink, smtp-source from postfix; swaks) live in /usr/sbin on Debian.
export PATH := $(PATH):/usr/sbin:/usr/lib/postfix/sbin

# Tools are pinned and installed into ./bin from the Go module proxy.
LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
CONTROLLER_TOOLS_VERSION ?= v0.23.0

.PHONY: all
all: build

##@ Development

.PHONY: manifests
manifests: controller-gen $(LOCALBIN)/api-docs ## Generate CRDs (config/crd/bases) and RBAC (config/rbac) from the API markers, copy them into the Helm chart, and write docs/api.md.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:allowDangerousTypes=false paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@# The Helm chart carries copies, so it can never drift from what is generated here.
	rm -f charts/kuberelay/files/crds/*.yaml
	cp config/crd/bases/*.yaml charts/kuberelay/files/crds/
	cp config/rbac/role.yaml charts/kuberelay/files/rbac/role.yaml
	$(LOCALBIN)/api-docs -o docs/api.md config/crd/bases/*.yaml

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Format the code.
	$(GO) fmt ./...

.PHONY: vet
vet: ## Run go vet.
	$(GOBUILDENV) $(GO) vet $(GOBUILDFLAGS) ./...

.PHONY: test
test: manifests generate fmt-check vet envtest helm ## Run every test (needs postfix and swaks: see .ci/run).
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets)" HELM="$(HELM)" $(GO) test -race -count=1 ./...

.PHONY: fmt-check
fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on: $$out"; exit 1; fi

##@ Build

.PHONY: build
build: ## Build the relay and the operator (manager) binaries into bin/.
	$(GOBUILDENV) $(GO) build $(GOBUILDFLAGS) -ldflags '$(LDFLAGS)' -o bin/relay ./relay/cmd/relay
	$(GOBUILDENV) $(GO) build $(GOBUILDFLAGS) -ldflags '$(LDFLAGS)' -o bin/manager .

.PHONY: image
image: build $(LOCALBIN)/image ## Build the container image as a tarball (dist/kuberelay-image.tar) from bin/, no container engine needed.
	$(LOCALBIN)/image -manager bin/manager -relay bin/relay -version $(VERSION) -commit $(COMMIT) \
		-created $$(git log -1 --format=%ct 2>/dev/null || date +%s) -o dist/kuberelay-image.tar

.PHONY: docker-build
docker-build: ## Build the same image with a container engine from the Dockerfile.
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t ghcr.io/kuberelay/kuberelay:$(VERSION) .

.PHONY: run
run: build envtest $(LOCALBIN)/run ## Run everything locally with no cluster: a control plane, the operator, the samples, a relay, a mail capture.
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets)" $(LOCALBIN)/run -relay bin/relay

.PHONY: run-relay
run-relay: $(LOCALBIN)/run-relay ## Run just a relay locally on a built-in configuration (no control plane), delivering to a local mail capture.
	$(LOCALBIN)/run-relay

##@ Benchmarks

.PHONY: bench-relay
bench-relay: build $(LOCALBIN)/bench-relay ## Compare relayed and direct delivery rates with smtp-source and smtp-sink.
	$(LOCALBIN)/bench-relay -relay bin/relay

.PHONY: bench-operator
bench-operator: build envtest $(LOCALBIN)/bench-operator ## Time the operator rendering 200 relays x 5 domains against envtest, its peak memory and idle API writes.
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets)" $(LOCALBIN)/bench-operator -manager bin/manager

##@ Tools

.PHONY: envtest
envtest: ## Build kube-apiserver, etcd and kubectl for envtest from the Go module proxy (cached in ~/.cache/kuberelay).
	@hack/envtest-assets >/dev/null

.PHONY: cluster-assets
cluster-assets: ## Build the binaries of a one-node cluster (kubelet, kube-proxy, ...) from the Go module proxy (cached in ~/.cache/kuberelay).
	@hack/kube-assets cluster >/dev/null

.PHONY: cluster-up
cluster-up: cluster-assets image ## Start a one-node cluster on this machine (root; apt: containerd runc containernetworking-plugins iptables) with the kuberelay image imported.
	GO="$(GO)" hack/cluster/cluster up

.PHONY: e2e
e2e: cluster-assets helm image $(LOCALBIN)/e2e ## End to end on a one-node cluster (root; apt: containerd runc containernetworking-plugins iptables): install, mail, DKIM, hot reloads, deletion.
	$(LOCALBIN)/e2e -skip-image -helm $(HELM)

.PHONY: cluster-down
cluster-down: ## Stop the one-node cluster and undo its changes to the host (logs stay in ~/.cache/kuberelay/cluster-state/logs).
	hack/cluster/cluster down

# The hack/ drivers are built into bin/ like every other tool (never at the root, never
# committed); go build's cache makes the rebuild on every call cheap.
HACK_TOOLS := api-docs bench-operator bench-relay e2e image run run-relay

.PHONY: tools
tools: $(addprefix $(LOCALBIN)/,$(HACK_TOOLS)) ## Build the hack/ drivers into ./bin.
$(addprefix $(LOCALBIN)/,$(HACK_TOOLS)): $(LOCALBIN)/%: FORCE
	$(GOBUILDENV) $(GO) build $(GOBUILDFLAGS) -o $@ ./hack/$*

.PHONY: FORCE
FORCE:

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into ./bin.
$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) $(GOBUILDENV) $(GO) install $(GOBUILDFLAGS) sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $@

HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
HELM_VERSION ?= v3.22.0

.PHONY: helm
helm: $(HELM) ## Install the Helm client into ./bin (the chart tests run it).
$(HELM):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) $(GOBUILDENV) $(GO) install $(GOBUILDFLAGS) helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(LOCALBIN)/helm $@

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
