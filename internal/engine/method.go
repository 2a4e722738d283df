package engine

import (
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Methods of storing the selected projections in ModeDeltaCoMe
// (CompressOptions.Method, archive Settings.Method).
const (
	// MethodDeltaCoMe stores mixed-precision quantized singular vectors
	// within the --ratio budget (archive kind "lowrank-sym", or "lowrank"
	// on GridAsym). The default.
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

// Grids of MethodDeltaCoMe (CompressOptions.Grid, archive Settings.Grid).
const (
	// GridSym quantizes each singular vector on its own symmetric grid,
	// sigma folded into the scales (archive kind "lowrank-sym"). The
	// default.
	GridSym = archive.GridSym
	// GridAsym quantizes them on asymmetric grids with a scale and a
	// minimum per group and float32 sigma (kind "lowrank"), the first
	// format's quantizer.
	GridAsym = archive.GridAsym
)

// Grids lists the grids, the default first.
var Grids = []string{GridSym, GridAsym}

// grid returns the grid of opt's method: opt.Grid with "" meaning GridSym
// for MethodDeltaCoMe, "" for the other methods.
func (opt *CompressOptions) grid() string {
	switch {
	case opt.method() != MethodDeltaCoMe:
		return opt.Grid
	case opt.Grid == "":
		return GridSym
	}
	return opt.Grid
}

// kind returns the lossy storage kind of opt's method and grid (checked by
// validate).
func (opt *CompressOptions) kind() *storage.Kind {
	k, _ := storage.ForMethod(opt.method(), opt.grid())
	return k
}

// checkMethod returns an error wrapping ErrUsage for an unknown method or
// a grid that does not apply to it.
func checkMethod(m, grid string) error {
	if _, ok := storage.ForMethod(m, ""); !ok {
		return errorf(ErrUsage, "unknown method %q (want deltacome, bitdelta or lowrank)", m)
	}
	if _, ok := storage.ForMethod(m, grid); !ok {
		return errorf(ErrUsage, "grid %q does not apply to method %q (want sym or asym, method deltacome)", grid, m)
	}
	return nil
}

// recordMethod records the method in the archive settings and clears the
// settings that do not apply to it (its kind's Settings in the storage
// table): BitDelta has no ratio, schedule, group size or SVD; plain low
// rank has no schedule or group size and always takes the exact SVD.
func (opt *CompressOptions) recordMethod(s *archive.Settings) {
	s.Method = opt.method()
	if s.Method == MethodDeltaCoMe && opt.grid() == GridSym {
		// GridAsym is recorded as no grid, as archives made before grids
		// existed have it: the same options write the same bytes.
		s.Grid, s.Refit = GridSym, opt.Refit
	}
	if k, ok := storage.ForMethod(s.Method, s.Grid); ok {
		k.Settings(s)
	}
}
