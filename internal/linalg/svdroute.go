package linalg

import (
	"errors"
	"fmt"
)

// ErrBadRoute reports an unknown SVD route name (ParseRoute).
var ErrBadRoute = errors.New("unknown SVD route")

// Route selects how Truncated computes a truncated SVD. The zero value is
// RouteAuto.
type Route int

// The routes.
const (
	// RouteAuto uses the randomized route for matrices whose short side is
	// at least AutoMinDim and the exact route for smaller ones.
	RouteAuto Route = iota
	// RouteExact is Exact: the Gram matrix's eigendecomposition in float64.
	RouteExact
	// RouteRandomized is Randomized with DefaultRandomized options.
	RouteRandomized
)

// AutoMinDim is the short side from which RouteAuto takes the randomized
// route: 1536 with OpenBLAS, 512 in pure Go (see autoMinDim in the backend
// files). Below it the exact route costs little and the randomized one saves
// little, since its sketch then spans a large part of the space anyway; from
// it up the randomized route is several times faster at ratio-16 ranks and
// adds under 1% to the aggregate relative error (docs/PERFORMANCE.md).
const AutoMinDim = autoMinDim

// ParseRoute parses "auto", "exact" or "randomized". Errors wrap ErrBadRoute.
func ParseRoute(s string) (Route, error) {
	switch s {
	case "auto":
		return RouteAuto, nil
	case "exact":
		return RouteExact, nil
	case "randomized":
		return RouteRandomized, nil
	}
	return 0, fmt.Errorf("%w %q: want auto, exact or randomized", ErrBadRoute, s)
}

// String returns the name ParseRoute accepts.
func (m Route) String() string {
	switch m {
	case RouteAuto:
		return "auto"
	case RouteExact:
		return "exact"
	case RouteRandomized:
		return "randomized"
	}
	return fmt.Sprintf("Route(%d)", int(m))
}

// Resolve returns the route m takes for a rows x cols matrix: RouteExact or
// RouteRandomized.
func (m Route) Resolve(rows, cols int) Route {
	if m == RouteAuto {
		if min(rows, cols) >= AutoMinDim {
			return RouteRandomized
		}
		return RouteExact
	}
	return m
}

// TruncatedMatrix is Truncated for a Matrix: the randomized route reads it
// panel by panel (RandomizedMatrix), the exact route whole.
func TruncatedMatrix(a Matrix, rank int, m Route) (*SVD, error) {
	rows, cols := a.Dims()
	switch m.Resolve(rows, cols) {
	case RouteExact:
		if err := checkMatrix(a, rank); err != nil {
			return nil, err
		}
		data, err := whole(a)
		if err != nil {
			return nil, err
		}
		return Exact(data, rows, cols, rank)
	case RouteRandomized:
		return RandomizedMatrix(a, rank, DefaultRandomized())
	}
	return nil, fmt.Errorf("%w: %v", ErrBadRoute, m)
}

// Truncated computes the truncated SVD of the row-major rows x cols matrix a,
// keeping at most rank triplets, by the route m resolves to for its shape
// (Exact, or Randomized with DefaultRandomized options). Errors are Exact's.
func Truncated(a []float32, rows, cols, rank int, m Route) (*SVD, error) {
	switch m.Resolve(rows, cols) {
	case RouteExact:
		return Exact(a, rows, cols, rank)
	case RouteRandomized:
		return Randomized(a, rows, cols, rank, DefaultRandomized())
	}
	return nil, fmt.Errorf("%w: %v", ErrBadRoute, m)
}
