package engine

import (
	"github.com/deltacome/deltacome/internal/storage"
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
	if _, ok := storage.ForMethod(m); ok {
		return nil
	}
	return errorf(ErrUsage, "unknown method %q (want deltacome, bitdelta or lowrank)", m)
}

// recordMethod records the method in the archive settings and clears the
// settings that do not apply to it (its kind's Settings in the storage
// table): BitDelta has no ratio, schedule, group size or SVD; plain low
// rank has no schedule or group size and always takes the exact SVD.
func (opt *CompressOptions) recordMethod(s *archive.Settings) {
	s.Method = opt.method()
	if k, ok := storage.ForMethod(s.Method); ok {
		k.Settings(s)
	}
}
