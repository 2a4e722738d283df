# deltacome build, test and demo targets. `make help` lists them.
GO      ?= go
BIN     := bin/deltacome
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/deltacome/deltacome/internal/cli.Version=$(VERSION)
DEMO    := demo-out

# BACKEND picks the linear algebra: openblas (OpenBLAS + LAPACKE through cgo,
# build tag `openblas`; apt-get install libopenblas-dev liblapacke-dev) or go
# (pure-Go gonum). By default openblas when a C compiler can link both
# libraries, else go.
BACKEND ?= $(shell printf 'int main(void){return 0;}' | $${CC:-cc} -x c - -o /dev/null -lopenblas -llapacke >/dev/null 2>&1 && echo openblas || echo go)
ifeq ($(BACKEND),openblas)
TAGS := -tags openblas
else ifeq ($(BACKEND),go)
TAGS :=
else
$(error BACKEND must be openblas or go, got $(BACKEND))
endif

PREFIX  ?= /usr/local

.PHONY: help build install test test-short vet fuzz demo clean bench

help:
	@echo "make build   build $(BIN)"
	@echo "make install build, then copy $(BIN) to $(PREFIX)/bin (PREFIX=/usr/local)"
	@echo "make demo    compress, inspect and reconstruct the bundled tiny-llama pair (testdata/)"
	@echo "make test    vet and run every test"
	@echo "make fuzz    run each fuzz target for FUZZTIME (default 30s)"
	@echo "make bench   time compress and reconstruct of one Llama-2-7B-shaped layer against the GEMM floor"
	@echo "BACKEND=openblas|go selects the linear algebra (default: openblas when installed; now $(BACKEND))"

build:
	@echo "linear algebra backend: $(BACKEND)"
	$(GO) build -trimpath $(TAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/deltacome

install: build
	install -d $(PREFIX)/bin
	install -m 0755 $(BIN) $(PREFIX)/bin/deltacome
	@echo "installed $(PREFIX)/bin/deltacome ($(BACKEND) backend)"

vet:
	$(GO) vet $(TAGS) ./...

test: vet
	@echo "linear algebra backend: $(BACKEND)"
	$(GO) test $(TAGS) -count=1 ./...

test-short:
	$(GO) test $(TAGS) -short ./...

# RUNS runs of each step, medians reported; SVD=exact|randomized|auto;
# SHAPE=7B, 70B or "7B 70B" (both, and the time per parameter compared).
RUNS ?= 3
SHAPE ?= 7B
bench: build
	SHAPE="$(SHAPE)" scripts/bench.sh $(BIN) $(RUNS)

# Each fuzz target runs for FUZZTIME. Minimization of each new interesting
# input is bounded by a count of runs: the default (60 s per input) would
# spend the whole budget minimizing rather than fuzzing.
FUZZTIME ?= 30s
FUZZ_TARGETS := ./pkg/stfile:FuzzParse ./pkg/archive:FuzzParse ./pkg/archive:FuzzManifest \
	./internal/engine:FuzzCraftedArchive
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1000x; \
	done

demo: build
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN) compress testdata/tiny-llama/base testdata/tiny-llama/math $(DEMO)/math.dcm
	$(BIN) inspect $(DEMO)/math.dcm
	$(BIN) reconstruct testdata/tiny-llama/base $(DEMO)/math.dcm $(DEMO)/math
	ls -l testdata/tiny-llama/math $(DEMO)/math.dcm $(DEMO)/math

clean:
	rm -rf bin $(DEMO)
