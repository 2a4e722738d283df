package engine

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Shard selects one worker's share of Compress's work: part Index (1 to
// Count) of Count. The zero value means the whole archive.
type Shard struct {
	Index, Count int
}

// String returns "i/n".
func (s Shard) String() string { return fmt.Sprintf("%d/%d", s.Index, s.Count) }

// sharded reports whether s asks for a part rather than the whole archive.
func (s Shard) sharded() bool { return s.Count > 0 }

func (s Shard) validate() error {
	if s == (Shard{}) {
		return nil
	}
	if s.Count < 1 || s.Count > archive.MaxParts || s.Index < 1 || s.Index > s.Count {
		return errorf(ErrUsage, "shard %s: want i/n with 1 <= i <= n <= %d", s, archive.MaxParts)
	}
	return nil
}

// PartShare totals one part's share of the work.
type PartShare struct {
	// Index is the part's number, 1 to the part count.
	Index int
	// Tensors and LossyTensors count the fine-tune tensors the part
	// encodes, and those of them stored lossily; OrigBytes totals them.
	Tensors      int
	LossyTensors int
	OrigBytes    int64
	// BaseOnly counts the base tensors without a fine-tune counterpart the
	// part hashes; SideFiles is true for the one part that carries the side
	// files.
	BaseOnly  int
	SideFiles bool
	// Work is the part's estimated cost, in the units of workCost.
	Work int64
}

// assignment is which part does what: every fine-tune tensor, every base
// tensor the fine-tune lacks and the side files (as one item) go to exactly
// one part.
type assignment struct {
	ft       map[string]int // fine-tune tensor -> part (1-based)
	baseOnly map[string]int // base tensor absent from the fine-tune -> part
	side     int            // the part carrying the side files
	shares   []PartShare    // indexed by part - 1
}

// bytesWork is workCost's charge per byte read, hashed and (for lossless
// tensors) XORed and zstd-compressed: a few nanoseconds a byte on one core,
// which is what a core spends on a few hundred floating-point operations
// of the SVD.
const bytesWork = 256

// workCost estimates the work of encoding fine-tune tensor t (bt its base
// counterpart, if any) of class c, in floating-point operations. A lossy
// Delta-CoMe or low-rank projection is charged the randomized SVD at the
// rank its budget holds at 2 bits (the count linalg.RandomizedFLOPs gives:
// 8·rows·cols·k + 4·min(rows, cols)·k²), whatever route the build would
// take, so that every machine computes the same assignment; every tensor
// is charged its bytes. Integers keep the sums exact on every platform.
func workCost(t, bt checkpoint.Tensor, c tensorClass, opt *CompressOptions) int64 {
	w := bytesWork * (t.Size + bt.Size)
	if c != classLossy || opt.method() == MethodBitDelta {
		return w
	}
	rows, cols := int(t.Shape[0]), int(t.Shape[1])
	budget := svdquant.Budget(rows, cols, opt.Ratio)
	var k int64
	if svdRank := opt.kind().SVDRank; svdRank != nil {
		k = int64(svdRank(rows, cols, opt.GroupSize, budget))
	}
	if opt.method() == MethodLowRank {
		k = budget / (2 * int64(rows+cols)) // bf16 factors: 2·k·(rows + cols) bytes
	}
	k = min(k, int64(min(rows, cols)))
	return w + 8*int64(rows)*int64(cols)*k + 4*int64(min(rows, cols))*k*k
}

// assign splits the work of compressing ft against base into count parts
// of near-equal estimated cost: the items (each fine-tune tensor, each base
// tensor the fine-tune lacks, the side files) in decreasing cost, ties in
// name order, each to the part with the least work so far, ties to the
// lowest index (longest processing time first, within 4/3 of the optimum).
// It depends only on the checkpoints' headers, the side files' sizes and
// opt, so every worker computes the same one.
func assign(base, ft *checkpoint.Checkpoint, side []checkpoint.SideFile, opt *CompressOptions, count int) (*assignment, error) {
	type item struct {
		name  string
		cost  int64
		class tensorClass
		bytes int64
		kind  int // 0 fine-tune tensor, 1 base-only tensor, 2 side files
	}
	var items []item
	for _, name := range ft.Names() {
		c, err := classify(base, ft, name, opt)
		if err != nil {
			return nil, err
		}
		t, _ := ft.Tensor(name)
		bt, _ := base.Tensor(name)
		items = append(items, item{name: name, cost: workCost(t, bt, c, opt), class: c, bytes: t.Size})
	}
	for _, name := range base.Names() {
		if _, ok := ft.Tensor(name); !ok {
			bt, _ := base.Tensor(name)
			items = append(items, item{name: name, cost: bytesWork * bt.Size, kind: 1})
		}
	}
	var sideBytes int64
	for _, f := range side {
		sideBytes += f.Size
	}
	items = append(items, item{cost: bytesWork * sideBytes, kind: 2})
	slices.SortStableFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(b.cost, a.cost), cmp.Compare(a.kind, b.kind), cmp.Compare(a.name, b.name))
	})

	a := &assignment{ft: map[string]int{}, baseOnly: map[string]int{}, shares: make([]PartShare, count)}
	for i := range a.shares {
		a.shares[i].Index = i + 1
	}
	for _, it := range items {
		p := 0
		for i := range a.shares {
			if a.shares[i].Work < a.shares[p].Work {
				p = i
			}
		}
		s := &a.shares[p]
		s.Work += it.cost
		switch it.kind {
		case 0:
			a.ft[it.name] = p + 1
			s.Tensors++
			s.OrigBytes += it.bytes
			if it.class == classLossy {
				s.LossyTensors++
			}
		case 1:
			a.baseOnly[it.name] = p + 1
			s.BaseOnly++
		default:
			a.side = p + 1
			s.SideFiles = true
		}
	}
	return a, nil
}

// probeWindow and probeWindows fix the bytes of each tensor an identity
// reads: all of a tensor of up to probeWindows windows, else that many
// windows spread evenly from its first byte to its last. A fine-tune
// changes its projections throughout, so windows spread over every tensor
// tell two fine-tunes (or checkpoints) apart at a few hundred KiB read per
// tensor, where hashing whole checkpoints on every worker would cost each
// as much I/O as the whole job.
const (
	probeWindow  = 4 << 10
	probeWindows = 16
)

// identity returns the identity of checkpoint c (docs/FORMAT.md section
// 7.2): "sha256:" and the hex SHA-256 over, for each tensor in order, its
// name, dtype, shape and the SHA-256 of its probe windows, then over each
// side file's name, size and SHA-256.
func identity(c *checkpoint.Checkpoint, side []checkpoint.SideFile) (string, error) {
	h := sha256.New()
	for _, name := range c.Names() {
		t, _ := c.Tensor(name)
		data, err := c.Data(name)
		if err != nil {
			return "", errorf(ErrInput, "%w", err)
		}
		w := sha256.New()
		if n := int64(len(data)); n <= probeWindow*probeWindows {
			w.Write(data)
		} else {
			for k := range int64(probeWindows) {
				off := k * (n - probeWindow) / (probeWindows - 1)
				w.Write(data[off : off+probeWindow])
			}
		}
		c.Release(name)
		fmt.Fprintf(h, "tensor\x00%s\x00%s\x00%v\x00%x\n", name, t.DType, t.Shape, w.Sum(nil))
	}
	for _, f := range side {
		data, err := readSmallFile(f.Path, f.Size)
		if err != nil {
			return "", errorf(ErrInput, "side file: %w", err)
		}
		fmt.Fprintf(h, "side\x00%s\x00%d\x00%s\n", f.Name, f.Size, sha256Hex(data))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// names returns the fine-tune tensors of part p in ft's order.
func (a *assignment) names(ft *checkpoint.Checkpoint, p int) []string {
	return slices.DeleteFunc(ft.Names(), func(n string) bool { return a.ft[n] != p })
}

// partRecord returns the part record of part s of an archive of base and
// ft (side: ft's side files).
func partRecord(base, ft *checkpoint.Checkpoint, side []checkpoint.SideFile, s Shard) (*archive.Part, error) {
	baseID, err := identity(base, nil)
	if err != nil {
		return nil, fmt.Errorf("base: %w", err)
	}
	ftID, err := identity(ft, side)
	if err != nil {
		return nil, fmt.Errorf("fine-tune: %w", err)
	}
	return &archive.Part{Index: s.Index, Count: s.Count, BaseTensors: base.Names(), BaseIdentity: baseID, FineTuneIdentity: ftID}, nil
}
