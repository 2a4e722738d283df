package engine

import (
	"errors"
	"fmt"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/bitdelta"
	"github.com/deltacome/deltacome/internal/lowrankbf16"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Methods of storing the selected projections in ModeDeltaCoMe
// (CompressOptions.Method, archive Settings.Method).
const (
	// MethodDeltaCoMe stores mixed-precision quantized singular vectors
	// within the --ratio budget (archive kind "lowrank"). The default.
	MethodDeltaCoMe = "deltacome"
	// MethodBitDelta stores sign(Delta) at one bit per element and one
	// scale per matrix (kind "bitdelta"); its size is fixed, about 1/16 of
	// fp16 whatever the ratio.
	MethodBitDelta = "bitdelta"
	// MethodLowRank stores the top-r singular factors in bf16, r the largest
	// rank within the --ratio budget (kind "lowrank-bf16").
	MethodLowRank = "lowrank"
)

// Methods lists the methods, the default first.
var Methods = []string{MethodDeltaCoMe, MethodBitDelta, MethodLowRank}

// method returns opt.Method with "" meaning MethodDeltaCoMe.
func (opt *CompressOptions) method() string {
	if opt.Method == "" {
		return MethodDeltaCoMe
	}
	return opt.Method
}

// checkMethod returns an error wrapping ErrUsage for an unknown method.
func checkMethod(m string) error {
	switch m {
	case "", MethodDeltaCoMe, MethodBitDelta, MethodLowRank:
		return nil
	}
	return errorf(ErrUsage, "unknown method %q (want deltacome, bitdelta or lowrank)", m)
}

// storeBitDelta stores delta as kind bitdelta: packed signs and one scale.
func (e *encoded) storeBitDelta(delta []float32) error {
	enc := bitdelta.Encode(delta)
	e.rec.Kind = archive.KindBitDelta
	e.rec.BitDelta = &enc.Record
	return errors.Join(
		e.add(archive.RoleSigns, enc.Signs, archive.CodecRaw, 0, safetensors.U8, nil),
		e.add(archive.RoleScale, enc.Scale, archive.CodecRaw, 0, safetensors.F32, []uint64{1}),
	)
}

// storeLowRankBF16 stores delta as kind lowrank-bf16: bf16 SVD factors of
// the largest rank within the ratio's budget.
func (e *encoded) storeLowRankBF16(delta []float32, rows, cols int, ratio float64) error {
	enc, err := lowrankbf16.Encode(delta, rows, cols, ratio)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", e.rec.Name, err)
	}
	e.rec.Kind = archive.KindLowRankBF16
	e.rec.LowRankBF16 = &enc.Record
	r := uint64(enc.Record.Rank)
	return errors.Join(
		e.add(archive.RoleU, enc.U, archive.CodecRaw, 0, safetensors.BF16, []uint64{uint64(rows), r}),
		e.add(archive.RoleV, enc.V, archive.CodecRaw, 0, safetensors.BF16, []uint64{r, uint64(cols)}),
	)
}

// decodeBaseline rebuilds a tensor stored as bitdelta or lowrank-bf16 over
// its base bytes into a buffer from alloc; blob returns the decoded blob of a
// role.
func decodeBaseline(rec *archive.Tensor, bdata []byte, bdt safetensors.DType, blob func(role string) ([]byte, error), alloc func(n int64) []byte) ([]byte, error) {
	dt, err := safetensors.ParseDType(rec.DType)
	if err != nil || len(rec.Shape) != 2 {
		return nil, fmt.Errorf("%w: tensor %q: %s record with dtype %s shape %v", archive.ErrFormat, rec.Name, rec.Kind, rec.DType, rec.Shape)
	}
	rows, cols := int(rec.Shape[0]), int(rec.Shape[1])
	if int64(rows)*int64(cols)*int64(dt.Size()) != rec.Bytes {
		return nil, fmt.Errorf("%w: tensor %q: %d bytes recorded for %s %v", archive.ErrFormat, rec.Name, rec.Bytes, rec.DType, rec.Shape)
	}
	roles := archive.KindRoles(rec.Kind) // signs, scale or u, v
	parts := make([][]byte, len(roles))
	for i, role := range roles {
		if parts[i], err = blob(role); err != nil {
			return nil, err
		}
	}
	out := alloc(rec.Bytes)
	if rec.Kind == archive.KindLowRankBF16 {
		err = lowrankbf16.Apply(out, dt, bdata, bdt, rows, cols, rec.LowRankBF16, parts[0], parts[1])
	} else {
		err = bitdelta.Apply(out, dt, bdata, bdt, parts[0], parts[1])
	}
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
	}
	return out, nil
}

// recordMethod records the method in the archive settings and clears the
// settings that do not apply to it: BitDelta has no ratio, schedule, group
// size or SVD; plain low rank has no schedule or group size and always
// takes the exact SVD (internal/lowrankbf16).
func (opt *CompressOptions) recordMethod(s *archive.Settings) {
	s.Method = opt.method()
	switch s.Method {
	case MethodBitDelta:
		s.Ratio, s.Schedule, s.GroupSize, s.SVD = 0, "", 0, ""
	case MethodLowRank:
		s.Schedule, s.GroupSize, s.SVD = "", 0, "exact"
	}
}
