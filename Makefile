# deltacome build, test and demo targets. `make help` lists them.
GO      ?= go
BIN     := bin/deltacome
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/deltacome/deltacome/internal/cli.Version=$(VERSION)
DEMO    := demo-out

.PHONY: help build test test-short vet fuzz demo clean

help:
	@echo "make build   build $(BIN)"
	@echo "make demo    compress, inspect and reconstruct the bundled tiny-llama pair (testdata/)"
	@echo "make test    vet and run every test"
	@echo "make fuzz    run each fuzz target for FUZZTIME (default 30s)"

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/deltacome

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -count=1 ./...

test-short:
	$(GO) test -short ./...

FUZZTIME ?= 30s
fuzz:
	$(GO) test ./pkg/stfile -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

demo: build
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN) compress testdata/tiny-llama/base testdata/tiny-llama/math $(DEMO)/math.dcm
	$(BIN) inspect $(DEMO)/math.dcm
	$(BIN) reconstruct testdata/tiny-llama/base $(DEMO)/math.dcm $(DEMO)/math
	ls -l testdata/tiny-llama/math $(DEMO)/math.dcm $(DEMO)/math

clean:
	rm -rf bin $(DEMO)
