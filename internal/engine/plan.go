package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// PlanSameOrXOR is the planned kind of a tensor present in the base with the
// same dtype and shape that is not low-rank compressed: it is stored as
// archive.KindSame when its bytes equal the base's and archive.KindXOR
// otherwise, which only reading the bytes can tell.
const PlanSameOrXOR = "same|xor"

// PlannedTensor is what a header-only plan knows about one tensor.
type PlannedTensor struct {
	Name  string
	DType string
	Shape []uint64
	// Part is the part that encodes the tensor when the plan is for
	// CompressOptions.Shard (1 to its Count); 0 otherwise.
	Part int
	// Kind is the lossy kind of the method (archive.KindLowRank,
	// KindBitDelta or KindLowRankBF16) for a selected projection, else
	// archive.KindFull or PlanSameOrXOR. A projection equal to its base
	// is stored as archive.KindSame instead, which only its bytes tell.
	Kind string
	// OrigBytes is the tensor's size in the fine-tune.
	OrigBytes int64
	// Budget is the exact byte budget of a low-rank tensor (its fp16 size /
	// ratio); 0 for other kinds, bitdelta included (its size is fixed).
	Budget int64
	// MaxBytes bounds the bytes the archive will store for the tensor: the
	// budget for a low-rank tensor, the packed signs and scale for
	// bitdelta, zstd's worst case for a lossless one.
	// With CompressOptions.MaxError, Budget is the budget the first pass
	// chose and MaxBytes the bytes it predicts: estimates, not bounds. With
	// a ratio and BudgetModel both are the chosen budget, a bound.
	// The least is 0 for every kind (a tensor equal to the base is stored as
	// nothing), so no lower bound is given.
	MaxBytes int64
}

// CompressPlan is what Compress would do, known from the checkpoints'
// headers alone (no tensor bytes are read).
type CompressPlan struct {
	Tensors []PlannedTensor
	// OrigBytes totals the fine-tune's tensors.
	OrigBytes int64
	// ByKind totals the planned tensors by Kind.
	ByKind map[string]*PlanTotals
	// SideFiles and SideBytes count the side files an FT folder carries
	// (stored zstd-compressed, so at most SideMaxBytes).
	SideFiles    int
	SideBytes    int64
	SideMaxBytes int64
	// Skipped lists the entries of an FT folder that are not carried, with
	// the reason; each is also a WarnSkippedFile warning.
	Skipped []checkpoint.SkippedFile
	// HeaderBytes estimates the archive's header: blob entries and the
	// manifest, built from the plan with placeholder checksums and band
	// lists (an estimate: the real band lists and blob sizes vary).
	HeaderBytes int64
	// MaxArchiveBytes bounds the archive's size: every tensor's MaxBytes,
	// the side files' bound and the header estimate.
	MaxArchiveBytes int64
	// Warnings lists what Compress would warn about before its work.
	Warnings []Warning
	// Parts is each part's share of the work when the plan is for
	// CompressOptions.Shard: the same for every part of one set.
	Parts []PartShare
	// Target is the first pass's prediction for CompressOptions.MaxError
	// or BudgetModel; nil without a first pass.
	Target *TargetEstimate
	// Memory is how Compress would size its pool, and the peak memory it
	// expects, for this part's tensors when sharded.
	Memory MemoryPlan
}

// PlanTotals sums planned tensors of one kind.
type PlanTotals struct {
	Tensors   int
	OrigBytes int64
	MaxBytes  int64
}

// lowRankCandidate reports whether Compress stores the tensor name (t in the
// fine-tune, bt in the base) lossily with its method when its bytes differ
// from the base's: a selected 2-D floating-point projection in
// ModeDeltaCoMe. It reads headers only and does not compare shapes (see
// classify).
func lowRankCandidate(name string, t, bt checkpoint.Tensor, opt *CompressOptions) bool {
	return opt.Mode == ModeDeltaCoMe && len(t.Shape) == 2 && len(bt.Shape) == 2 &&
		dtype.IsFloat(t.DType) && dtype.IsFloat(bt.DType) && opt.Select.Match(name)
}

// tensorClass is how Compress stores one tensor, known from the headers.
type tensorClass int

const (
	// classFull: stored whole, bit-exact (archive.KindFull): absent from
	// the base, or another dtype or shape there.
	classFull tensorClass = iota
	// classLossy: a selected projection, stored with the method's lossy
	// kind (or archive.KindSame when equal to the base).
	classLossy
	// classSameOrXOR: same dtype and shape as the base, not selected:
	// archive.KindSame or archive.KindXOR, which only the bytes tell.
	classSameOrXOR
)

// classify is the one rule by which Plan and Compress (encodeTensor) decide
// how the fine-tune tensor name is stored. A tensor whose shape differs from
// the base's (an embedding or output head grown by added tokens) is stored
// whole; a selected projection whose shape differs is an error wrapping
// ErrInput that says how to store it whole instead.
func classify(base, ft *checkpoint.Checkpoint, name string, opt *CompressOptions) (tensorClass, error) {
	t, _ := ft.Tensor(name)
	bt, inBase := base.Tensor(name)
	resized := inBase && !slices.Equal(bt.Shape, t.Shape)
	switch {
	case !inBase:
		return classFull, nil
	case lowRankCandidate(name, t, bt, opt) && resized:
		return classFull, errorf(ErrInput, "tensor %q is selected for lossy compression, but its shape is %v in the fine-tune %s and %v in the base %s, and a delta needs one shape; to store it whole, bit-exact, add --exclude '%s'",
			name, t.Shape, ft.Path(), bt.Shape, base.Path(), "^"+regexp.QuoteMeta(name)+"$")
	case lowRankCandidate(name, t, bt, opt):
		return classLossy, nil
	case resized || bt.DType != t.DType:
		return classFull, nil
	}
	return classSameOrXOR, nil
}

// checkClasses returns the first error classify finds in FT: Compress runs
// it before writing anything.
func checkClasses(base, ft *checkpoint.Checkpoint, opt *CompressOptions) error {
	for _, name := range ft.Names() {
		if _, err := classify(base, ft, name, opt); err != nil {
			return err
		}
	}
	return nil
}

// zstdBound is the largest zstd frame for n input bytes, ZSTD_COMPRESSBOUND
// in the reference zstd.h: incompressible input is stored in raw blocks.
func zstdBound(n int64) int64 {
	const blockSize = 128 << 10
	b := n + n>>8
	if n < blockSize {
		b += (blockSize - n) >> 11
	}
	return b
}

// Plan returns what Compress would store for FT (ftPath) against BASE
// (basePath) with opt, reading only the checkpoints' headers and side-file
// sizes. It fails where Compress would fail before reading bytes: invalid
// options, unreadable checkpoints, a selected projection whose shape
// differs between BASE and FT (errors wrap ErrUsage or ErrInput).
//
// With opt.MaxError or BudgetModel the budgets depend on the projections'
// bytes: Plan then runs Compress's first pass (see PlanContext).
func Plan(basePath, ftPath string, opt CompressOptions) (*CompressPlan, error) {
	return PlanContext(context.Background(), basePath, ftPath, opt)
}

// PlanContext is Plan, cancelled with ctx. With opt.MaxError or
// BudgetModel it reads every selected projection and runs Compress's first
// pass (one SVD per projection and the allocation, no encoding) to choose
// the budgets, which it reports as each tensor's Budget and MaxBytes, with
// the predicted totals in Target (see TargetEstimate).
func PlanContext(ctx context.Context, basePath, ftPath string, opt CompressOptions) (*CompressPlan, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	base, ft, err := openPair(basePath, ftPath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	defer ft.Close()

	p := &CompressPlan{ByKind: map[string]*PlanTotals{}, Warnings: pairWarnings(base, ft, &opt)}
	if opt.firstPass() {
		if err := checkClasses(base, ft, &opt); err != nil {
			return nil, err
		}
		if opt.target, err = planTarget(ctx, base, ft, &opt); err != nil {
			return nil, err
		}
		p.Target = opt.target.estimate()
	}
	for _, name := range ft.Names() {
		t, _ := ft.Tensor(name)
		pt := PlannedTensor{Name: name, DType: t.DType.String(), Shape: t.Shape, OrigBytes: t.Size}
		class, err := classify(base, ft, name, &opt)
		if err != nil {
			return nil, err
		}
		switch class {
		case classLossy:
			k := opt.kind()
			pt.Kind = k.Name
			pt.Budget, pt.MaxBytes = k.Cost(int(t.Shape[0]), int(t.Shape[1]), opt.Ratio)
			if opt.target != nil {
				pt.Budget, pt.MaxBytes = opt.target.budgetOf(name)
				if opt.MaxError == 0 {
					pt.MaxBytes = pt.Budget // no step-ups at a ratio: a bound
				}
			}
		case classFull:
			pt.Kind, pt.MaxBytes = archive.KindFull, zstdBound(t.Size)
		default:
			pt.Kind, pt.MaxBytes = PlanSameOrXOR, zstdBound(t.Size)
		}
		p.Tensors = append(p.Tensors, pt)
		p.OrigBytes += pt.OrigBytes
		k := p.ByKind[pt.Kind]
		if k == nil {
			k = &PlanTotals{}
			p.ByKind[pt.Kind] = k
		}
		k.Tensors++
		k.OrigBytes += pt.OrigBytes
		k.MaxBytes += pt.MaxBytes
		p.MaxArchiveBytes += pt.MaxBytes
	}
	side, skipped, err := ft.SideFiles()
	if err != nil {
		return nil, errorf(ErrInput, "fine-tune: %w", err)
	}
	names := ft.Names()
	if opt.Shard.sharded() {
		a, err := assign(base, ft, side, &opt, opt.Shard.Count)
		if err != nil {
			return nil, err
		}
		p.Parts = a.shares
		for i := range p.Tensors {
			p.Tensors[i].Part = a.ft[p.Tensors[i].Name]
		}
		names = a.names(ft, opt.Shard.Index)
	}
	p.Memory = planMemory(base, ft, names, &opt)
	p.Skipped = skipped
	p.Warnings = append(p.Warnings, skippedWarnings(skipped)...)
	for _, f := range side {
		p.SideFiles++
		p.SideBytes += f.Size
		p.SideMaxBytes += zstdBound(f.Size)
	}
	p.MaxArchiveBytes += p.SideMaxBytes
	if p.HeaderBytes, err = estimateHeader(base, ft, side, p, opt); err != nil {
		return nil, err
	}
	p.MaxArchiveBytes += p.HeaderBytes
	return p, nil
}

// estimateHeader builds the manifest and blob entries Compress would write,
// with placeholder checksums and each low-rank tensor's bands as one entry,
// and returns the encoded header's size.
func estimateHeader(base, ft *checkpoint.Checkpoint, side []checkpoint.SideFile, p *CompressPlan, opt CompressOptions) (int64, error) {
	m, err := newManifest(ft, opt)
	if err != nil {
		return 0, err
	}
	hash := strings.Repeat("0", 64)
	for _, name := range base.Names() {
		t, _ := base.Tensor(name)
		m.Base.Tensors = append(m.Base.Tensors, archive.BaseTensor{Name: name, DType: t.DType.String(), Shape: t.Shape, SHA256: hash})
	}
	m.Base.Fingerprint = archive.Fingerprint(m.Base.Tensors)
	var infos []stfile.Info
	addBlob := func(blobName, role string, size int64) archive.Blob {
		b := archive.Blob{Role: role, Tensor: blobName, Codec: archive.CodecZstd, RawSize: size, Size: size, CRC32C: 0xffffffff}
		infos = append(infos, stfile.Info{Name: blobName, DType: safetensors.U8, Shape: []uint64{uint64(size)}, Size: size})
		return b
	}
	for _, pt := range p.Tensors {
		t, _ := ft.Tensor(pt.Name)
		rec := archive.Tensor{Name: pt.Name, DType: pt.DType, Shape: pt.Shape, Shard: t.Shard, Kind: pt.Kind, Bytes: pt.OrigBytes, SHA256: hash}
		if pt.Kind == PlanSameOrXOR {
			rec.Kind = archive.KindXOR
		}
		roles := archive.KindRoles(rec.Kind)
		if k, ok := storage.Lookup(rec.Kind); ok && k.Estimate != nil {
			k.Estimate(&rec, pt.Budget, opt.GroupSize)
		}
		for _, role := range roles {
			share := pt.MaxBytes / int64(len(roles))
			rec.Blobs = append(rec.Blobs, addBlob(pt.Name+"/"+role, role, share))
		}
		m.Tensors = append(m.Tensors, rec)
	}
	for _, f := range side {
		b := addBlob("__side__/"+f.Name, archive.RoleSideFile, f.Size)
		m.SideFiles = append(m.SideFiles, archive.SideFile{Name: f.Name, Size: f.Size, SHA256: hash, Blob: b})
	}
	js, err := json.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("estimate manifest: %w", err)
	}
	const crcPlaceholder = "00000000"
	h, err := stfile.EncodeHeader(infos, map[string]string{archive.MetadataKey: string(js), archive.MetadataCRCKey: crcPlaceholder})
	if err != nil {
		return 0, fmt.Errorf("estimate header: %w", err)
	}
	const lengthPrefix = 8 // the u64 header length of a safetensors file
	return lengthPrefix + int64(len(h)), nil
}
