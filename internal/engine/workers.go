package engine

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"

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

// memoryShare is the part of a memory cap that the compress pool plans for
// tensors in flight: 9/16, poolMemory's 1.125 GiB of the 2 GiB a layer of
// a 7B or 70B model is held to on 2 cores. The rest is for the
// checkpoints' mapped pages, the collector's headroom over the live heap,
// the runtime and the BLAS's own buffers.
const memoryShare = 9.0 / 16

// DefaultMaxMemory is the memory cap compress works within when
// CompressOptions.MaxMemory is not set, on a machine of the given cores:
// poolMemory(cores) / memoryShare, 2 GiB up to 6 cores.
func DefaultMaxMemory(cores int) int64 {
	return int64(math.Ceil(float64(poolMemory(cores)) / memoryShare))
}

// memoryOverhead is what a compress process holds besides its tensors'
// working sets: the runtime, the manifest, the BLAS's buffers, the pages
// of the block being hashed or decoded (measured: 70-90 MiB for a lossless
// compress of small tensors).
const memoryOverhead = 96 << 20

// MemoryPlan is how Compress sizes its pool from a memory cap.
type MemoryPlan struct {
	// MaxMemory is the cap, bytes: CompressOptions.MaxMemory or
	// DefaultMaxMemory.
	MaxMemory int64
	// Workers is the number of tensors encoded at once.
	Workers int
	// Largest is the tensor with the largest working set, and
	// LargestBytes that working set (svdquant.Memory for a lossy one).
	Largest      string
	LargestBytes int64
	// Peak estimates the peak memory: the Workers largest working sets
	// and memoryOverhead, before the collector's headroom (which the cap
	// bounds through the runtime's soft memory limit).
	Peak int64
}

// planMemory sizes the compress pool: as many workers as the largest
// working sets fit in the cap's memoryShare, at least one (a tensor larger
// than the cap is encoded alone: slower, as the collector works harder,
// never refused), at most GOMAXPROCS or opt.Workers when given.
func planMemory(base, ft *checkpoint.Checkpoint, names []string, opt *CompressOptions) MemoryPlan {
	mp := MemoryPlan{MaxMemory: opt.MaxMemory}
	if mp.MaxMemory <= 0 {
		mp.MaxMemory = DefaultMaxMemory(runtime.GOMAXPROCS(0))
	}
	sets := make([]int64, 0, len(names))
	for _, name := range names {
		n := tensorMemory(base, ft, name, opt)
		sets = append(sets, n)
		if n > mp.LargestBytes {
			mp.Largest, mp.LargestBytes = name, n
		}
	}
	slices.Sort(sets)
	slices.Reverse(sets)
	mp.Workers = opt.Workers
	if mp.Workers < 1 {
		mp.Workers = runtime.GOMAXPROCS(0)
		if mp.LargestBytes > 0 {
			mp.Workers = min(mp.Workers, int(float64(mp.MaxMemory)*memoryShare/float64(mp.LargestBytes)))
		}
		mp.Workers = max(mp.Workers, 1)
	}
	mp.Peak = memoryOverhead
	for _, n := range sets[:min(mp.Workers, len(sets))] {
		mp.Peak += n
	}
	return mp
}

// tensorMemory estimates the memory that encoding the fine-tune tensor
// name holds: svdquant.Memory for a Delta-CoMe projection, the float32
// delta and its working set for the other lossy methods, the tensor and
// zstd's output for one stored losslessly.
func tensorMemory(base, ft *checkpoint.Checkpoint, name string, opt *CompressOptions) int64 {
	t, _ := ft.Tensor(name)
	class, err := classify(base, ft, name, opt)
	if err != nil || class != classLossy {
		return 2 * t.Size
	}
	bt, _ := base.Tensor(name)
	rows, cols := int(t.Shape[0]), int(t.Shape[1])
	if opt.method() != MethodDeltaCoMe {
		return 4*int64(rows)*int64(cols) + svdquant.WorkingSetBytes(rows, cols)
	}
	o := opt.encodeOptions()
	var whole int64
	if opt.firstPass() {
		// An error target or a model budget reads the delta whole, and may
		// give a projection up to the largest budget of its ladder.
		whole = 4 * int64(rows) * int64(cols)
		o.Ratio = o.Ratio / 1.5
		if opt.MaxError > 0 {
			o.Ratio = svdquant.LadderMinRatio
		}
	}
	var calib int64
	if opt.Calibration != "" && opt.grid() == GridSym {
		calib = svdquant.CalibrationMemory(rows, cols, o)
	}
	return whole + calib + svdquant.Memory(rows, cols, int(t.DType.Size()+bt.DType.Size()), o, opt.grid() == GridSym)
}

// setMemoryLimit sets the runtime's soft memory limit to 3/4 of the cap
// (the Go heap's share), unless GOMEMLIMIT sets one, and returns the
// function that restores the previous limit. Above the limit the collector
// runs more often rather than the heap growing to twice the live data. The
// other quarter is memory the runtime does not see: the checkpoints' mapped
// pages of the block being read and the BLAS's per-thread buffers. Measured
// on a 70B-class layer at ratio 8 (2-core VM, 2 GiB cap): with 7/8 of the
// cap for the heap the process peaked at 2060 MiB, 270 MiB above the heap's
// limit; with 3/4, at 1816 MiB.
func setMemoryLimit(maxMemory int64) (restore func()) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	prev := debug.SetMemoryLimit(maxMemory / 4 * 3)
	return func() { debug.SetMemoryLimit(prev) }
}

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
