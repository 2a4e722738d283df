package alloc

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// Curve is one matrix's trade-off between bytes and error: point k stores
// Bytes[k] bytes and leaves a total squared error SqErr[k] (in the squared
// units of the matrix). Points may come in any order and need not all be
// useful; a matrix has at least one point.
type Curve struct {
	Bytes []int64
	SqErr []float64
}

// Target chooses one point per curve so that the total squared error is at
// most maxSqErr with as few total bytes as it can find, and returns the
// chosen index of each curve. When no choice meets maxSqErr, ok is false and
// choice holds each curve's point of least error (fewest bytes among equals).
//
// This is the equal-slope rule of rate-distortion theory over matrices: the
// lower convex hull of each curve is walked from its cheapest point, always
// taking next the hull segment with the largest error drop per byte over all
// curves (a Lagrange multiplier swept downwards), until the total error fits.
// That choice is optimal among the hull points up to the last segment taken;
// the last step is then replaced by the cheapest single move of any one curve
// to any point that makes the total fit, and finally every curve is moved to
// its cheapest point that keeps the total within maxSqErr, repeatedly, the
// largest saving first. The result is deterministic: ties go to the lower
// curve and point index.
//
// Target panics if a curve is empty, its slices differ in length, or a
// point has negative bytes or a negative or non-finite error.
func Target(curves []Curve, maxSqErr float64) (choice []int, ok bool) {
	choice = make([]int, len(curves))
	hulls := make([][]int, len(curves))
	for j, c := range curves {
		c.check(j)
		hulls[j] = c.hull()
		choice[j] = hulls[j][0]
	}
	total := func() float64 { // summed in curve order: the same sum every time
		s := 0.0
		for j, c := range curves {
			s += c.SqErr[choice[j]]
		}
		return s
	}
	if total() <= maxSqErr {
		return choice, true
	}
	best := make([]int, len(curves)) // the least-error point of each curve
	for j, h := range hulls {
		best[j] = h[len(h)-1]
	}
	minErr := 0.0
	for j, c := range curves {
		minErr += c.SqErr[best[j]]
	}
	if minErr > maxSqErr {
		return best, false
	}

	// Hull segments, steepest first. Within a curve the hull's slopes fall,
	// so taking segments in this order always extends a prefix of each hull.
	type segment struct {
		curve, pos int // from hulls[curve][pos] to hulls[curve][pos+1]
		slope      float64
	}
	var segs []segment
	for j, h := range hulls {
		c := curves[j]
		for p := 0; p+1 < len(h); p++ {
			dErr := c.SqErr[h[p]] - c.SqErr[h[p+1]]
			dBytes := float64(c.Bytes[h[p+1]] - c.Bytes[h[p]])
			segs = append(segs, segment{curve: j, pos: p, slope: dErr / dBytes})
		}
	}
	slices.SortStableFunc(segs, func(a, b segment) int {
		if c := cmp.Compare(b.slope, a.slope); c != 0 {
			return c
		}
		if c := cmp.Compare(a.curve, b.curve); c != 0 {
			return c
		}
		return cmp.Compare(a.pos, b.pos)
	})
	for _, s := range segs {
		next := hulls[s.curve][s.pos+1]
		prev := choice[s.curve]
		choice[s.curve] = next
		if total() <= maxSqErr {
			// The last segment may overshoot: from the state before it,
			// take the cheapest single move that fits instead.
			choice[s.curve] = prev
			cheapestFit(curves, choice, maxSqErr, total)
			break
		}
	}
	trim(curves, choice, maxSqErr, total)
	return choice, true
}

// cheapestFit moves one curve of an infeasible choice to the point that
// makes the total fit at the least added bytes. Such a move exists: the
// caller found one along the hull.
func cheapestFit(curves []Curve, choice []int, maxSqErr float64, total func() float64) {
	j, k := cheapestMove(curves, choice, maxSqErr, total, math.MaxInt64)
	if j < 0 {
		panic("alloc: internal error: no single move fits after a hull segment did")
	}
	choice[j] = k
}

// trim repeatedly applies the move of one curve to a cheaper point that
// keeps the total within maxSqErr with the largest saving, until none is
// left.
func trim(curves []Curve, choice []int, maxSqErr float64, total func() float64) {
	for {
		j, k := cheapestMove(curves, choice, maxSqErr, total, 0)
		if j < 0 {
			return
		}
		choice[j] = k
	}
}

// cheapestMove returns the move of one curve j to another point k after
// which the total is within maxSqErr, with the least change of bytes below
// `below` (the first such move on ties), or j = -1 when there is none.
// choice is left as it was.
func cheapestMove(curves []Curve, choice []int, maxSqErr float64, total func() float64, below int64) (bestJ, bestK int) {
	bestJ, bestK = -1, -1
	for j, c := range curves {
		cur := choice[j]
		for k := range c.Bytes {
			add := c.Bytes[k] - c.Bytes[cur]
			if k == cur || add >= below {
				continue
			}
			choice[j] = k
			if total() <= maxSqErr {
				bestJ, bestK, below = j, k, add
			}
			choice[j] = cur
		}
	}
	return bestJ, bestK
}

// check panics on a malformed curve j.
func (c Curve) check(j int) {
	if len(c.Bytes) == 0 || len(c.Bytes) != len(c.SqErr) {
		panic(fmt.Sprintf("alloc: curve %d has %d byte counts and %d errors", j, len(c.Bytes), len(c.SqErr)))
	}
	for k := range c.Bytes {
		if e := c.SqErr[k]; c.Bytes[k] < 0 || !(e >= 0) || math.IsInf(e, 0) {
			panic(fmt.Sprintf("alloc: curve %d point %d: %d bytes, error %v", j, k, c.Bytes[k], e))
		}
	}
}

// hull returns the indices of the lower convex hull of c's points, from the
// cheapest point (least error among the cheapest) to the point of least
// error (fewest bytes among those), bytes increasing and error strictly
// falling, each segment's error drop per byte less than the one before.
func (c Curve) hull() []int {
	idx := make([]int, len(c.Bytes))
	for k := range idx {
		idx[k] = k
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if x := cmp.Compare(c.Bytes[a], c.Bytes[b]); x != 0 {
			return x
		}
		return cmp.Compare(c.SqErr[a], c.SqErr[b])
	})
	// Pareto front: each point must have strictly less error than every
	// cheaper one.
	var front []int
	for _, k := range idx {
		if len(front) == 0 || c.SqErr[k] < c.SqErr[front[len(front)-1]] {
			if len(front) > 0 && c.Bytes[k] == c.Bytes[front[len(front)-1]] {
				continue // same bytes, more error: sorted after its better twin
			}
			front = append(front, k)
		}
	}
	// Lower convex hull of the front (monotone chain).
	var h []int
	for _, k := range front {
		for len(h) >= 2 && !c.convex(h[len(h)-2], h[len(h)-1], k) {
			h = h[:len(h)-1]
		}
		h = append(h, k)
	}
	return h
}

// convex reports whether b lies strictly below the segment from a to d, so
// that the slopes a→b and b→d fall (a, b, d in increasing bytes).
func (c Curve) convex(a, b, d int) bool {
	// slope(a,b) > slope(b,d) in error drop per byte, cross-multiplied.
	s1 := (c.SqErr[a] - c.SqErr[b]) * float64(c.Bytes[d]-c.Bytes[b])
	s2 := (c.SqErr[b] - c.SqErr[d]) * float64(c.Bytes[b]-c.Bytes[a])
	return s1 > s2
}

// TargetWithin is Target with curve j restricted to its points lo[j] to
// hi[j] (inclusive indices, lo[j] ≤ hi[j]): a trust region around a share
// of the bytes decided elsewhere. The indices returned are into the whole
// curves. It panics if the lengths differ or a range is empty or outside
// its curve.
func TargetWithin(curves []Curve, lo, hi []int, maxSqErr float64) (choice []int, ok bool) {
	if len(lo) != len(curves) || len(hi) != len(curves) {
		panic(fmt.Sprintf("alloc: %d curves, %d and %d range ends", len(curves), len(lo), len(hi)))
	}
	sub := make([]Curve, len(curves))
	for j, c := range curves {
		if lo[j] < 0 || hi[j] < lo[j] || hi[j] >= len(c.Bytes) {
			panic(fmt.Sprintf("alloc: curve %d of %d points restricted to [%d, %d]", j, len(c.Bytes), lo[j], hi[j]))
		}
		sub[j] = Curve{Bytes: c.Bytes[lo[j] : hi[j]+1], SqErr: c.SqErr[lo[j] : hi[j]+1]}
	}
	choice, ok = Target(sub, maxSqErr)
	for j := range choice {
		choice[j] += lo[j]
	}
	return choice, ok
}
