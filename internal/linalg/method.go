package linalg

import (
	"errors"
	"fmt"
)

// ErrBadMethod reports an unknown SVD method name (ParseMethod).
var ErrBadMethod = errors.New("unknown SVD route")

// Method selects how Truncated computes a truncated SVD. The zero value is
// MethodAuto.
type Method int

// The methods.
const (
	// MethodAuto uses the randomized route for matrices whose short side is
	// at least AutoMinDim and the exact route for smaller ones.
	MethodAuto Method = iota
	// MethodExact is Exact: the Gram matrix's eigendecomposition in float64.
	MethodExact
	// MethodRandomized is Randomized with DefaultRandomized options.
	MethodRandomized
)

// AutoMinDim is the short side from which MethodAuto takes the randomized
// route: 1536 with OpenBLAS, 512 in pure Go (see autoMinDim in the backend
// files). Below it the exact route costs little and the randomized one saves
// little, since its sketch then spans a large part of the space anyway; from
// it up the randomized route is several times faster at ratio-16 ranks and
// adds under 1% to the aggregate relative error (docs/PERFORMANCE.md).
const AutoMinDim = autoMinDim

// ParseMethod parses "auto", "exact" or "randomized". Errors wrap ErrBadMethod.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "auto":
		return MethodAuto, nil
	case "exact":
		return MethodExact, nil
	case "randomized":
		return MethodRandomized, nil
	}
	return 0, fmt.Errorf("%w %q: want auto, exact or randomized", ErrBadMethod, s)
}

// String returns the name ParseMethod accepts.
func (m Method) String() string {
	switch m {
	case MethodAuto:
		return "auto"
	case MethodExact:
		return "exact"
	case MethodRandomized:
		return "randomized"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// Resolve returns the route m takes for a rows x cols matrix: MethodExact or
// MethodRandomized.
func (m Method) Resolve(rows, cols int) Method {
	if m == MethodAuto {
		if min(rows, cols) >= AutoMinDim {
			return MethodRandomized
		}
		return MethodExact
	}
	return m
}

// Truncated computes the truncated SVD of the row-major rows x cols matrix a,
// keeping at most rank triplets, by the route m resolves to for its shape
// (Exact, or Randomized with DefaultRandomized options). Errors are Exact's.
func Truncated(a []float32, rows, cols, rank int, m Method) (*SVD, error) {
	switch m.Resolve(rows, cols) {
	case MethodExact:
		return Exact(a, rows, cols, rank)
	case MethodRandomized:
		return Randomized(a, rows, cols, rank, DefaultRandomized())
	}
	return nil, fmt.Errorf("%w: %v", ErrBadMethod, m)
}
