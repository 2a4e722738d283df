package storage

import (
	"errors"
	"fmt"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/bitdelta"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/lowrankbf16"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// ErrBase reports a base tensor that cannot be what a record is stored
// against: another dtype or size than a tensor stored as the base itself.
var ErrBase = errors.New("base tensor does not match the record")

// Kind is the codec of one storage kind. Hooks a kind has no use for are
// nil: the bit-exact kinds have no Cost, PairBytes, Settings or Product.
type Kind struct {
	// Name is the kind's archive.Tensor.Kind (archive.KindSame, ...).
	Name string
	// Base reports whether the kind is stored against the base tensor of
	// the same name (every kind but archive.KindFull).
	Base bool
	// Encode stores in as this kind: it sets rec's description record and
	// returns the blobs to write, in archive.KindRoles order. Errors are
	// the encoder's, not yet naming the tensor.
	Encode func(rec *archive.Tensor, in *Input) ([]Blob, error)
	// Decode returns the fine-tune bytes of the tensor in.Rec (validated by
	// pkg/archive), in a buffer from in.Alloc when it computes them, or
	// the base's or blob's bytes themselves. Malformed blobs give errors
	// wrapping archive.ErrFormat, a base that does not fit ErrBase.
	Decode func(in *DecodeInput) ([]byte, error)
	// Memory is the working memory, in bytes, of decoding the tensor rec:
	// its output and whatever Decode holds beside it.
	Memory func(rec *archive.Tensor) int64
	// Cost returns, for a rows x cols projection compressed at ratio, the
	// byte budget (0 when the size does not depend on it) and the most
	// bytes the kind stores for it. Lossy kinds only.
	Cost func(rows, cols int, ratio float64) (budget, maxBytes int64)
	// PairBytes is the cost of the cheapest singular pair of a rows x cols
	// projection, for kinds that keep a rank; groupSize is the
	// quantization group length asked for.
	PairBytes func(rows, cols, groupSize int) int64
	// SVDRank is the number of singular triplets Encode computes for a
	// rows x cols projection with a budget of budget bytes, for kinds that
	// quantize singular vectors (nil for the others).
	SVDRank func(rows, cols, groupSize int, budget int64) int
	// Estimate sets on rec a description record of typical size for
	// budget, for estimating a header from a plan. Lossy kinds only.
	Estimate func(rec *archive.Tensor, budget int64, groupSize int)
	// Settings clears the archive settings that do not apply to the
	// method storing projections as this kind. Lossy kinds only.
	Settings func(s *archive.Settings)
	// Product returns the delta a factored kind stores, rows x cols
	// row-major in float32, from its decoded blobs in archive.KindRoles
	// order; nil for kinds that store no factors.
	Product func(rec *archive.Tensor, blobs [][]byte) ([]float32, error)
	// Report returns what the record says of its tensor, for inspect and
	// compress's lines.
	Report func(rec *archive.Tensor) Report
}

// Input is what Encode stores: the fine-tune bytes and the base's for the
// bit-exact kinds, the delta and the options for the lossy ones.
type Input struct {
	// Data and Base are the fine-tune's and the base's bytes; ElemSize is
	// the size of the fine-tune's dtype, the byte shuffle of zstd blobs.
	Data, Base []byte
	ElemSize   int
	// Delta is W_ft - W_base, row-major Rows x Cols, finite.
	Delta      []float32
	Rows, Cols int
	// Source, when not nil, is the delta instead of Delta, read a block of
	// rows at a time (KindLowRank and KindLowRankSym only, see
	// svdquant.EncodeMatrix).
	Source linalg.Matrix
	// Options are the lossy kinds' settings; Ratio applies to every one
	// but KindBitDelta, the rest to KindLowRank and KindLowRankSym only
	// (Refit to KindLowRankSym only).
	Options svdquant.Options
}

// matrix returns the delta as a linalg.Matrix: Source, else Delta.
func (in *Input) matrix() linalg.Matrix {
	if in.Source != nil {
		return in.Source
	}
	return &linalg.Dense{Data: in.Delta, Rows: in.Rows, Cols: in.Cols}
}

// Blob is one blob Encode produced, before its codec is applied.
type Blob struct {
	Role  string
	Raw   []byte
	Codec string
	// Shuffle is the element size of zstd's byte planes (0: none).
	Shuffle int
	// DType and Shape are the blob's safetensors entry (docs/FORMAT.md
	// section 1); a nil Shape means U8 of the stored length.
	DType safetensors.DType
	Shape []uint64
}

// DecodeInput is what Decode reads.
type DecodeInput struct {
	// Rec is the tensor's record; Blobs its decoded blobs in
	// archive.KindRoles order.
	Rec   *archive.Tensor
	Blobs [][]byte
	// Base and BaseDType are the base tensor of the same name; absent for
	// kinds whose Base is false.
	Base      []byte
	BaseDType safetensors.DType
	// Alloc returns a buffer of n bytes for the output; its contents are
	// unspecified.
	Alloc func(n int64) []byte
}

// Report is what a record says of its tensor beside its sizes. Pointers
// are nil, and Bands empty, where the kind has no such field.
type Report struct {
	Rank        *int
	Bands       []archive.Band
	Budget      *int64
	EnergyKept  *float64
	SVDFallback string
}

// Lookup returns the kind named name, and false for a kind this build does
// not know (which pkg/archive refuses when it reads the manifest).
func Lookup(name string) (*Kind, bool) {
	for i := range kinds {
		if kinds[i].Name == name {
			return &kinds[i], true
		}
	}
	return nil, false
}

// ForMethod returns the lossy kind compress method stores projections as
// ("" meaning the default, Delta-CoMe) on grid (archive.Settings.Grid), and
// false for an unknown method or a grid that does not apply to it.
func ForMethod(method, grid string) (*Kind, bool) {
	name, ok := archive.MethodKind(method, grid)
	if !ok {
		return nil, false
	}
	return Lookup(name)
}

// Names lists the kinds of the table, in table order.
func Names() []string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.Name
	}
	return names
}

// kinds is the table: one entry per storage kind.
var kinds = []Kind{
	{
		Name:   archive.KindSame,
		Base:   true,
		Encode: func(*archive.Tensor, *Input) ([]Blob, error) { return nil, nil },
		Decode: func(in *DecodeInput) ([]byte, error) {
			if int64(len(in.Base)) != in.Rec.Bytes || in.BaseDType.String() != in.Rec.DType {
				return nil, fmt.Errorf("%w: base has %s of %d bytes, archive expects %s of %d", ErrBase, in.BaseDType, len(in.Base), in.Rec.DType, in.Rec.Bytes)
			}
			return in.Base, nil
		},
		Memory: outputBytes,
		Report: func(*archive.Tensor) Report { return Report{} },
	},
	{
		Name: archive.KindXOR,
		Base: true,
		Encode: func(_ *archive.Tensor, in *Input) ([]Blob, error) {
			x := make([]byte, len(in.Data))
			for i := range x {
				x[i] = in.Data[i] ^ in.Base[i]
			}
			return []Blob{{Role: archive.RoleXOR, Raw: x, Codec: archive.CodecZstd, Shuffle: in.ElemSize, DType: safetensors.U8}}, nil
		},
		Decode: func(in *DecodeInput) ([]byte, error) {
			x := in.Blobs[0]
			if len(x) != len(in.Base) {
				return nil, fmt.Errorf("%w: xor blob of %d bytes for a base tensor of %d", archive.ErrFormat, len(x), len(in.Base))
			}
			out := in.Alloc(int64(len(x)))
			for i := range out {
				out[i] = x[i] ^ in.Base[i]
			}
			return out, nil
		},
		Memory: outputBytes,
		Report: func(*archive.Tensor) Report { return Report{} },
	},
	{
		Name: archive.KindFull,
		Encode: func(_ *archive.Tensor, in *Input) ([]Blob, error) {
			return []Blob{{Role: archive.RoleData, Raw: in.Data, Codec: archive.CodecZstd, Shuffle: in.ElemSize, DType: safetensors.U8}}, nil
		},
		Decode: func(in *DecodeInput) ([]byte, error) { return in.Blobs[0], nil },
		Memory: outputBytes,
		Report: func(*archive.Tensor) Report { return Report{} },
	},
	{
		Name: archive.KindLowRank,
		Base: true,
		Encode: func(rec *archive.Tensor, in *Input) ([]Blob, error) {
			enc, err := svdquant.EncodeMatrix(in.matrix(), in.Options)
			if err != nil {
				return nil, err
			}
			rec.LowRank = &enc.Record
			r := uint64(enc.Record.Rank)
			return []Blob{
				{Role: archive.RoleSigma, Raw: enc.Sigma, Codec: archive.CodecRaw, DType: safetensors.F32, Shape: []uint64{r}},
				{Role: archive.RoleUCodes, Raw: enc.UCodes, Codec: archive.CodecRaw, DType: safetensors.U8},
				{Role: archive.RoleUQParams, Raw: enc.UQParams, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: qparamsShape(enc.UQParams)},
				{Role: archive.RoleVCodes, Raw: enc.VCodes, Codec: archive.CodecRaw, DType: safetensors.U8},
				{Role: archive.RoleVQParams, Raw: enc.VQParams, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: qparamsShape(enc.VQParams)},
			}, nil
		},
		Decode: applied(func(out []byte, dt safetensors.DType, rows, cols int, in *DecodeInput) error {
			return svdquant.Apply(out, dt, in.Base, in.BaseDType, rows, cols, in.Rec.LowRank, lowRankFactors(in.Blobs))
		}),
		// The output and the decoded factors in float32: svdquant.Apply
		// forms the product a block of rows at a time.
		Memory: func(rec *archive.Tensor) int64 {
			n := rec.Bytes
			if len(rec.Shape) == 2 && rec.LowRank != nil {
				n += 4 * int64(rec.LowRank.Rank) * int64(rec.Shape[0]+rec.Shape[1])
			}
			return n
		},
		Cost:      budgetCost,
		PairBytes: func(rows, cols, groupSize int) int64 { return alloc.Cost(rows, cols, groupSize, []int{1}) },
		SVDRank:   svdquant.SVDRank,
		Estimate: func(rec *archive.Tensor, budget int64, groupSize int) {
			rec.LowRank = &archive.LowRank{Rank: 1, Bands: []archive.Band{{Bits: 8, Count: 1}}, GroupSize: groupSize,
				RelError: 0.5, DeltaNorm: 1, EnergyKept: 0.5, Budget: budget}
		},
		Settings: func(*archive.Settings) {},
		Product: func(rec *archive.Tensor, blobs [][]byte) ([]float32, error) {
			return lowRankFactors(blobs).Product(int(rec.Shape[0]), int(rec.Shape[1]), rec.LowRank)
		},
		Report: func(rec *archive.Tensor) Report {
			lr := rec.LowRank
			if lr == nil {
				return Report{}
			}
			return Report{Rank: &lr.Rank, Bands: lr.Bands, Budget: &lr.Budget, EnergyKept: &lr.EnergyKept, SVDFallback: lr.SVDFallback}
		},
	},
	{
		Name: archive.KindBitDelta,
		Base: true,
		Encode: func(rec *archive.Tensor, in *Input) ([]Blob, error) {
			enc := bitdelta.Encode(in.Delta)
			rec.BitDelta = &enc.Record
			return []Blob{
				{Role: archive.RoleSigns, Raw: enc.Signs, Codec: archive.CodecRaw, DType: safetensors.U8},
				{Role: archive.RoleScale, Raw: enc.Scale, Codec: archive.CodecRaw, DType: safetensors.F32, Shape: []uint64{1}},
			}, nil
		},
		Decode: applied(func(out []byte, dt safetensors.DType, _, _ int, in *DecodeInput) error {
			return bitdelta.Apply(out, dt, in.Base, in.BaseDType, in.Blobs[0], in.Blobs[1])
		}),
		Memory: baseAndDelta,
		Cost: func(rows, cols int, _ float64) (int64, int64) {
			return 0, bitdelta.Cost(rows * cols) // fixed: no budget
		},
		Estimate: func(rec *archive.Tensor, _ int64, _ int) {
			rec.BitDelta = &archive.BitDelta{RelError: 0.5, DeltaNorm: 1}
		},
		Settings: func(s *archive.Settings) { s.Ratio, s.Schedule, s.GroupSize, s.SVD = 0, "", 0, "" },
		Report:   func(*archive.Tensor) Report { return Report{} },
	},
	{
		Name: archive.KindLowRankBF16,
		Base: true,
		Encode: func(rec *archive.Tensor, in *Input) ([]Blob, error) {
			enc, err := lowrankbf16.Encode(in.Delta, in.Rows, in.Cols, in.Options.Ratio)
			if err != nil {
				return nil, err
			}
			rec.LowRankBF16 = &enc.Record
			r := uint64(enc.Record.Rank)
			return []Blob{
				{Role: archive.RoleU, Raw: enc.U, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: []uint64{uint64(in.Rows), r}},
				{Role: archive.RoleV, Raw: enc.V, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: []uint64{r, uint64(in.Cols)}},
			}, nil
		},
		Decode: applied(func(out []byte, dt safetensors.DType, rows, cols int, in *DecodeInput) error {
			return lowrankbf16.Apply(out, dt, in.Base, in.BaseDType, rows, cols, in.Rec.LowRankBF16, in.Blobs[0], in.Blobs[1])
		}),
		Memory:    baseAndDelta,
		Cost:      budgetCost,
		PairBytes: func(rows, cols, _ int) int64 { return lowrankbf16.Cost(rows, cols, 1) },
		Estimate: func(rec *archive.Tensor, budget int64, _ int) {
			rec.LowRankBF16 = &archive.LowRankBF16{Rank: 1, RelError: 0.5, DeltaNorm: 1, EnergyKept: 0.5, Budget: budget}
		},
		// Plain low rank always takes the exact SVD (internal/lowrankbf16).
		Settings: func(s *archive.Settings) { s.Schedule, s.GroupSize, s.SVD = "", 0, "exact" },
		Product: func(rec *archive.Tensor, blobs [][]byte) ([]float32, error) {
			return lowrankbf16.Product(blobs[0], blobs[1], int(rec.Shape[0]), int(rec.Shape[1]), rec.LowRankBF16.Rank)
		},
		Report: func(rec *archive.Tensor) Report {
			lr := rec.LowRankBF16
			if lr == nil {
				return Report{}
			}
			return Report{Rank: &lr.Rank, Budget: &lr.Budget, EnergyKept: &lr.EnergyKept}
		},
	},
	{
		Name: archive.KindLowRankSym,
		Base: true,
		Encode: func(rec *archive.Tensor, in *Input) ([]Blob, error) {
			enc, err := svdquant.EncodeSymMatrix(in.matrix(), in.Options)
			if err != nil {
				return nil, err
			}
			rec.LowRankSym = &enc.Record
			return []Blob{
				{Role: archive.RoleUCodes, Raw: enc.UCodes, Codec: archive.CodecRaw, DType: safetensors.U8},
				{Role: archive.RoleUScales, Raw: enc.UScales, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: []uint64{uint64(len(enc.UScales) / 2)}},
				{Role: archive.RoleVCodes, Raw: enc.VCodes, Codec: archive.CodecRaw, DType: safetensors.U8},
				{Role: archive.RoleVScales, Raw: enc.VScales, Codec: archive.CodecRaw, DType: safetensors.BF16, Shape: []uint64{uint64(len(enc.VScales) / 2)}},
			}, nil
		},
		Decode: applied(func(out []byte, dt safetensors.DType, rows, cols int, in *DecodeInput) error {
			return svdquant.ApplySym(out, dt, in.Base, in.BaseDType, rows, cols, in.Rec.LowRankSym, symFactors(in.Blobs))
		}),
		// The output and the decoded factors in float32, as KindLowRank.
		Memory: func(rec *archive.Tensor) int64 {
			n := rec.Bytes
			if len(rec.Shape) == 2 && rec.LowRankSym != nil {
				n += 4 * int64(rec.LowRankSym.Rank) * int64(rec.Shape[0]+rec.Shape[1])
			}
			return n
		},
		Cost: budgetCost,
		// groupSize is the asymmetric grid's flag; the symmetric grid
		// keeps one scale per vector, the cheapest pair.
		PairBytes: func(rows, cols, _ int) int64 { return alloc.CostSym(rows, cols, 0, []int{1}) },
		SVDRank:   svdquant.SVDRankSym,
		Estimate: func(rec *archive.Tensor, budget int64, _ int) {
			rec.LowRankSym = &archive.LowRankSym{LowRank: archive.LowRank{Rank: 1, Bands: []archive.Band{{Bits: 8, Count: 1}},
				RelError: 0.5, DeltaNorm: 1, EnergyKept: 0.5, Budget: budget}, Refit: svdquant.MaxRefit, RefitRound: svdquant.MaxRefit}
		},
		Settings: func(*archive.Settings) {},
		Product: func(rec *archive.Tensor, blobs [][]byte) ([]float32, error) {
			return symFactors(blobs).Product(int(rec.Shape[0]), int(rec.Shape[1]), rec.LowRankSym)
		},
		Report: func(rec *archive.Tensor) Report {
			lr := rec.LowRankSym
			if lr == nil {
				return Report{}
			}
			return Report{Rank: &lr.Rank, Bands: lr.Bands, Budget: &lr.Budget, EnergyKept: &lr.EnergyKept, SVDFallback: lr.SVDFallback}
		},
	},
}

// outputBytes is the working memory of a kind that holds only its output.
func outputBytes(rec *archive.Tensor) int64 { return rec.Bytes }

// baseAndDelta is the working memory of a kind that decodes the base and
// the delta to float32 beside its output: at most 12 bytes per element.
func baseAndDelta(rec *archive.Tensor) int64 {
	if len(rec.Shape) != 2 {
		return rec.Bytes
	}
	return 12 * int64(rec.Shape[0]) * int64(rec.Shape[1])
}

// budgetCost is the Cost of a kind that fills the budget of the ratio:
// fp16 size / ratio, its most bytes too.
func budgetCost(rows, cols int, ratio float64) (budget, maxBytes int64) {
	b := svdquant.Budget(rows, cols, ratio)
	return b, b
}

// applied is the Decode of a lossy kind: it checks the record's dtype,
// shape and bytes, then lets apply write base + Delta_hat, rows x cols
// elements of dt, into a buffer from in.Alloc.
func applied(apply func(out []byte, dt safetensors.DType, rows, cols int, in *DecodeInput) error) func(*DecodeInput) ([]byte, error) {
	return func(in *DecodeInput) ([]byte, error) {
		dt, rows, cols, err := matrix(in.Rec)
		if err != nil {
			return nil, err
		}
		out := in.Alloc(in.Rec.Bytes)
		if err := apply(out, dt, rows, cols, in); err != nil {
			return nil, err
		}
		return out, nil
	}
}

// qparamsShape is the [groups, 2] shape of a qparams blob of bf16 (scale,
// min) pairs.
func qparamsShape(qp []byte) []uint64 { return []uint64{uint64(len(qp) / 4), 2} }

// lowRankFactors names a Delta-CoMe tensor's blobs, given in
// archive.KindRoles order: sigma, u.codes, u.qparams, v.codes, v.qparams.
func lowRankFactors(blobs [][]byte) *svdquant.Factors {
	return &svdquant.Factors{Sigma: blobs[0], UCodes: blobs[1], UQParams: blobs[2], VCodes: blobs[3], VQParams: blobs[4]}
}

// symFactors names a lowrank-sym tensor's blobs, given in
// archive.KindRoles order: u.codes, u.scales, v.codes, v.scales.
func symFactors(blobs [][]byte) *svdquant.SymFactors {
	return &svdquant.SymFactors{UCodes: blobs[0], UScales: blobs[1], VCodes: blobs[2], VScales: blobs[3]}
}

// matrix returns the dtype and dimensions of a lossy kind's tensor,
// refusing a record whose dtype, shape and bytes disagree.
func matrix(rec *archive.Tensor) (dt safetensors.DType, rows, cols int, err error) {
	dt, err = safetensors.ParseDType(rec.DType)
	if err != nil || len(rec.Shape) != 2 {
		return 0, 0, 0, fmt.Errorf("%w: %s record with dtype %s shape %v", archive.ErrFormat, rec.Kind, rec.DType, rec.Shape)
	}
	rows, cols = int(rec.Shape[0]), int(rec.Shape[1])
	if int64(rows)*int64(cols)*int64(dt.Size()) != rec.Bytes {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes recorded for %s %v", archive.ErrFormat, rec.Bytes, rec.DType, rec.Shape)
	}
	return dt, rows, cols, nil
}
