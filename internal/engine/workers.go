package engine

import (
	"runtime"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// poolMemory is the memory the compress and reconstruct pools may plan for
// tensors in flight when --workers is not given, on a machine of the given
// cores: 1.125 GiB up to 6 cores, 192 MiB a core beyond. With the
// checkpoints' mapped pages and the garbage collector's headroom on top,
// peak RSS for a Llama-2-7B layer stays under 2 GiB on 2 cores (two MLP
// projections in flight, 1.5 GiB measured) and under 4 GiB on 16 (five).
// A second tensor in flight overlaps one tensor's serial steps (the
// eigensolver, the checksums) with the other's parallel ones.
func poolMemory(cores int) int64 { return max(1152<<20, int64(cores)*192<<20) }

// defaultWorkers sizes the compress pool from the cores and from the
// largest 2-D tensor of ft: each worker holds one tensor's delta (4 bytes
// per element) and its encoding working set (svdquant.WorkingSetBytes). At
// least one worker, at most GOMAXPROCS; with a BLAS that already uses every
// core a single large tensor keeps the machine busy.
func defaultWorkers(ft *checkpoint.Checkpoint) int {
	var largest int64
	for _, n := range ft.Names() {
		t, _ := ft.Tensor(n)
		if len(t.Shape) != 2 {
			continue
		}
		rows, cols := int(t.Shape[0]), int(t.Shape[1])
		largest = max(largest, 4*int64(rows)*int64(cols)+svdquant.WorkingSetBytes(rows, cols))
	}
	return poolSize(largest)
}

// reconstructWorkers sizes the reconstruct pool the same way: a tensor in
// flight holds what its kind's Memory says decoding it holds (its output
// bytes, and for the lossy kinds their float32 working set).
func reconstructWorkers(m *archive.Manifest) int {
	var largest int64
	for i := range m.Tensors {
		t := &m.Tensors[i]
		n := t.Bytes
		if k, ok := storage.Lookup(t.Kind); ok {
			n = k.Memory(t)
		}
		largest = max(largest, n)
	}
	return poolSize(largest)
}

// poolSize is the number of workers, each holding up to perWorker bytes,
// that fit poolMemory: at least one, at most GOMAXPROCS.
func poolSize(perWorker int64) int {
	n := runtime.GOMAXPROCS(0)
	if perWorker > 0 {
		n = min(n, int(poolMemory(n)/perWorker))
	}
	return max(n, 1)
}
