# flowdog. Targets that open raw sockets (run, test, bench-fastpath) need root
# or CAP_NET_RAW.
GO       ?= go
BIN      ?= bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 30s

.PHONY: all build run test race bench bench-fastpath bench-intercept fuzz lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/flowdog ./cmd/flowdog
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gwlbsim ./cmd/gwlbsim

# flowdog with its embedded defaults: Geneve on 0.0.0.0:6081, health on :8080,
# metrics on 127.0.0.1:9090.
run: build
	$(BIN)/flowdog run

# The whole suite: unit, fuzz seeds, and simulator integration tests, then
# again under the race detector.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 10m ./...
	$(GO) test -race -count=1 -timeout 15m ./...

race:
	$(GO) test -race -count=1 -timeout 15m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Fast-path packets/s and Gbps against a bare reflector, in one run.
bench-fastpath:
	$(GO) run ./cmd/bench-fastpath -runs 3

# HTTP/HTTPS through flowdog, intercepted vs fast path, in one run.
bench-intercept:
	$(GO) run ./cmd/bench-intercept -runs 3

FUZZPKGS ?= ./gwlb/packet ./gwlb ./gwlbsim ./cff ./proxy

# Every fuzz target of every decoder (and of the proxy's client leg), FUZZTIME each.
fuzz:
	@for p in $(FUZZPKGS); do \
		for t in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
			echo "== $$p $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...

clean:
	rm -rf $(BIN)

# End to end on real sockets (root): a local VPC of network namespaces with
# gwlbsim in TUN mode as GWLB, flowdog, nginx and curl. See README and e2e/.
.PHONY: e2e-bins e2e-up e2e-down e2e demo

e2e-bins: build
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/e2e-servers ./e2e/cmd/e2e-servers

# Build the local VPC and start every daemon in it (idempotent).
e2e-up: e2e-bins
	E2E_BIN=$(CURDIR)/$(BIN) e2e/vpc.sh up

# Stop the daemons and remove the namespaces (idempotent).
e2e-down:
	e2e/vpc.sh down

# The end-to-end suite; it builds its own binaries and its own VPC.
e2e:
	$(GO) test -tags e2e -count=1 -v -timeout 20m ./e2e/

# The local VPC with a few curl requests through flowdog, torn down on exit.
demo: e2e-bins
	E2E_BIN=$(CURDIR)/$(BIN) e2e/demo.sh
