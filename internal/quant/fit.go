package quant

import (
	"math"

	"github.com/deltacome/deltacome/internal/dtype"
)

// Clip search parameters. The values were tuned on Gaussian groups of 128
// (the statistics of singular vectors) for the squared error per evaluation
// of a candidate grid; see TestClipSearchGain for the resulting gains.
const (
	// clipStep is how far, as a fraction of the group's range max-min, one
	// step of the shrink search and of the per-end search moves an end.
	clipStep = 0.025
	// clipMaxShrinkSteps bounds the symmetric shrink at 10 steps, that is a
	// grid spanning down to 50% of the range: the optimum for 2-bit Gaussian
	// groups of 128 lies near 70%.
	clipMaxShrinkSteps = 10
	// clipPatience stops the shrink search after this many steps in a row
	// without improvement: the error is nearly unimodal in the shrink, and
	// bf16 rounding makes it bumpy enough that 1 or 2 stopped too early.
	clipPatience = 3
	// clipMaxEndSteps bounds each direction of the per-end search.
	clipMaxEndSteps = 10
	// lsMaxIter bounds the least-squares refits; each usually gains less than
	// the one before and the third rarely gains anything.
	lsMaxIter = 3
	// neighbourMinBits is the narrowest width at which the bf16 neighbours of
	// the chosen scale and minimum are searched: from 5 bits up the grid step
	// is within a few bf16 ulps of the range, so bf16 rounding is a large part
	// of the error (the neighbours remove 5% of the 8-bit error, more than
	// the rest of the search), while at 2-4 bits they gain under 1% for about
	// twice the work.
	neighbourMinBits = 5
)

// groupQuantizer chooses the grid of one group.
type groupQuantizer struct {
	maxQ       float64 // 2^bits - 1
	clip       bool
	neighbours bool // search bf16 neighbours (clip and bits >= neighbourMinBits)
}

func newGroupQuantizer(bits int, clip bool) groupQuantizer {
	return groupQuantizer{
		maxQ:       float64(int(1)<<bits - 1),
		clip:       clip,
		neighbours: clip && bits >= neighbourMinBits,
	}
}

// search is the state of one group's grid search.
type search struct {
	q       groupQuantizer
	x       []float32
	best    grid
	bestErr float64
}

// try evaluates the grid spanning [lo, hi] and keeps it if it beats the best
// so far, reporting whether it did.
func (s *search) try(lo, hi float64) bool {
	g, ok := newGrid(lo, hi, s.q.maxQ)
	return ok && s.tryGrid(g)
}

func (s *search) tryGrid(g grid) bool {
	if e := g.sqErrBelow(s.x, s.q.maxQ, s.bestErr); e < s.bestErr {
		s.best, s.bestErr = g, e
		return true
	}
	return false
}

// fit returns the grid for x (len(x) > 0) and its squared error.
//
// Without clip search that is the plain grid spanning [min(x), max(x)]. With
// it, starting from the plain grid, fit keeps the grid of smallest squared
// error (measured after bf16 rounding of scale and minimum) found by, in turn:
//  1. shrinking the range symmetrically about its centre, clipStep of the
//     range per end per step;
//  2. moving each end on its own, in and out, by clipStep of the range;
//  3. refitting minimum and scale by least squares to the current codes
//     (as in llama.cpp's make_qkx2_quants), up to lsMaxIter times;
//  4. from neighbourMinBits bits up, trying the neighbouring bf16 values of
//     the scale and the minimum.
//
// Every step only replaces the best grid by a better one, so the result is
// never worse than the plain grid.
func (q groupQuantizer) fit(x []float32) (grid, float64) {
	lo, hi := float64(x[0]), float64(x[0])
	for _, v := range x[1:] {
		if float64(v) < lo {
			lo = float64(v)
		}
		if float64(v) > hi {
			hi = float64(v)
		}
	}
	g, ok := newGrid(lo, hi, q.maxQ)
	if !ok {
		switch {
		case hi == lo || !(g.s > 0): // constant group, or scale below bf16's range
			g = constGrid(lo)
		default: // grid overflows float32: |x| near 3.4e38
			g = constGrid(lo/2 + hi/2)
		}
		return g, g.sqErr(x, q.maxQ)
	}
	s := search{q: q, x: x, best: g, bestErr: g.sqErr(x, q.maxQ)}
	if !q.clip {
		return s.best, s.bestErr
	}

	step := clipStep * (hi - lo)
	for i, misses := 1, 0; i <= clipMaxShrinkSteps && misses < clipPatience; i++ {
		d := float64(i) * step
		if s.try(lo+d, hi-d) {
			misses = 0
		} else {
			misses++
		}
	}

	for _, dir := range [...][2]float64{{1, 0}, {-1, 0}, {0, -1}, {0, 1}} {
		for range clipMaxEndSteps {
			a := float64(s.best.m) + dir[0]*step
			b := float64(s.best.m) + q.maxQ*float64(s.best.s) + dir[1]*step
			if !s.try(a, b) {
				break
			}
		}
	}

	for range lsMaxIter {
		a, b, ok := s.leastSquares()
		if !ok || !s.try(a, b) {
			break
		}
	}

	if q.neighbours {
		for improved := true; improved; {
			improved = false
			center := s.best
			for _, ds := range [...]uint16{0, 1, 0xffff} { // bit-pattern steps 0, +1, -1
				for _, dm := range [...]uint16{0, 1, 0xffff} {
					if ds == 0 && dm == 0 {
						continue
					}
					g, ok := gridFromBits(center.sBits+ds, center.mBits+dm, q.maxQ)
					if ok && s.tryGrid(g) {
						improved = true
					}
				}
			}
		}
	}
	return s.best, s.bestErr
}

// leastSquares returns the range [m, m + maxQ*s] of the (m, s) minimising
// sum (x - m - c*s)^2 for the codes c of x on the best grid, or false if the
// fit is degenerate (all codes equal) or gives a scale <= 0.
func (s *search) leastSquares() (lo, hi float64, ok bool) {
	g, maxQ := s.best, s.q.maxQ
	m64, inv := float64(g.m), 1/float64(g.s)
	var sc, scc, sx, sxc float64
	for _, v := range s.x {
		c := float64(g.code(v, m64, inv, maxQ))
		sc += c
		scc += c * c
		sx += float64(v)
		sxc += float64(v) * c
	}
	n := float64(len(s.x))
	det := n*scc - sc*sc
	if !(det > 0) {
		return 0, 0, false
	}
	scale := (n*sxc - sc*sx) / det
	m := (sx - scale*sc) / n
	if !(scale > 0) {
		return 0, 0, false
	}
	return m, m + maxQ*scale, true
}

// gridFromBits returns the grid with the given bf16 scale and minimum, and
// whether it is usable: the scale is positive and finite, the minimum finite,
// and so is every grid point. A grid point never exceeds the top one,
// m + maxQ*s, since float32 rounding is monotonic, so checking it suffices.
func gridFromBits(sBits, mBits uint16, maxQ float64) (grid, bool) {
	g := grid{sBits: sBits, mBits: mBits}
	g.s, g.m = dtype.Float32FromBF16(sBits), dtype.Float32FromBF16(mBits)
	if !(g.s > 0) || math.IsInf(float64(g.s), 0) || math.IsNaN(float64(g.m)) || math.IsInf(float64(g.m), 0) {
		return g, false
	}
	top := g.m + float32(float32(maxQ)*g.s)
	return g, !math.IsInf(float64(top), 0)
}
