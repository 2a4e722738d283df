package alloc

import (
	"math"
	"slices"
)

// table holds what the rate-distortion searches need for one Problem and one
// width set, so that any monotone plan is evaluated in O(L) time.
//
// A monotone plan over widths w[0] > w[1] > … > w[L-1] > w[L] = 0 is fully
// described by its boundaries: b[l] = the number of pairs with width ≥ w[l],
// 0 ≤ b[0] ≤ b[1] ≤ … ≤ b[L-1] ≤ r. Pairs [b[l-1], b[l]) get width w[l]
// (b[-1] = 0) and pairs from b[L-1] on are dropped. With prefix sums
// pre[l][k] = Σ_{i<k} Err(i, w[l]) the plan's error is
//
//	pre[L][r] + Σ_l (pre[l][b[l]] - pre[l+1][b[l]])
//
// and its cost depends only on kept = b[L-1] and Σ_l b[l]·(w[l] - w[l+1]),
// the sum of the widths.
type table struct {
	p      Problem
	w      []int       // the L nonzero widths, strictly decreasing, then 0
	L, r   int         // number of nonzero widths, number of pairs
	e      [][]float64 // e[l][i] = Err(i, w[l]), l ≤ L
	pre    [][]float64 // pre[l][k] = Σ_{i<k} e[l][i], l ≤ L, k ≤ r
	unit   []float64   // unit[l]: bytes of one pair at width w[l], codes counted fractionally
	errTol float64     // improvements at or below this are rounding noise
}

// newTable evaluates p.Err for every pair and every width in widths and 0.
func newTable(p Problem, widths []int) *table {
	r := len(p.Sigma)
	t := &table{p: p, w: append(slices.Clone(widths), 0), L: len(widths), r: r}
	t.e = make([][]float64, t.L+1)
	t.pre = make([][]float64, t.L+1)
	t.unit = make([]float64, t.L+1)
	ovh := float64(pairOverhead(p.Rows, p.Cols, p.groupSize(), p.Layout))
	for l, w := range t.w {
		t.e[l] = make([]float64, r)
		t.pre[l] = make([]float64, r+1)
		for i := range r {
			t.e[l][i] = p.err(i, w)
			t.pre[l][i+1] = t.pre[l][i] + t.e[l][i]
		}
		if w > 0 {
			t.unit[l] = float64(p.Rows+p.Cols)*float64(w)/8 + ovh
		}
	}
	// Prefix-sum differences carry absolute rounding errors of a few ulps
	// of the largest prefix sum; 1e-13 of the total leaves a wide margin
	// above that (ε = 2.2e-16) and is far below any change worth making.
	for l := range t.w {
		t.errTol = math.Max(t.errTol, 1e-13*t.pre[l][r])
	}
	return t
}

// errOf returns the error of the plan with boundaries b.
func (t *table) errOf(b []int) float64 {
	sum := t.pre[t.L][t.r]
	for l, k := range b {
		sum += t.pre[l][k] - t.pre[l+1][k]
	}
	return sum
}

// sumBits returns the sum of the widths of the plan with boundaries b.
func (t *table) sumBits(b []int) int64 {
	var s int64
	for l, k := range b {
		s += int64(k) * int64(t.w[l]-t.w[l+1])
	}
	return s
}

// fits reports whether the plan with boundaries b is within budget.
func (t *table) fits(b []int) bool {
	kept := 0
	if t.L > 0 {
		kept = b[t.L-1]
	}
	return t.p.cost(kept, t.sumBits(b)) <= t.p.Budget
}

// toBits converts boundaries to per-pair widths, trailing zeros omitted.
func (t *table) toBits(b []int) []int {
	if t.L == 0 {
		return nil
	}
	bits := make([]int, b[t.L-1])
	start := 0
	for l, k := range b {
		for i := start; i < k; i++ {
			bits[i] = t.w[l]
		}
		start = max(start, k)
	}
	return bits
}

// fromBits converts monotone per-pair widths to boundaries; ok is false if
// a width is not in the table's set.
func (t *table) fromBits(bits []int) (b []int, ok bool) {
	b = make([]int, t.L)
	for _, w := range bits {
		if w == 0 {
			continue
		}
		l := slices.Index(t.w[:t.L], w)
		if l < 0 {
			return nil, false
		}
		for j := l; j < t.L; j++ {
			b[j]++
		}
	}
	return b, true
}

// directErr sums the plan's error pair by pair in index order, the same sum
// Problem.sqErr computes, so that candidates compare exactly as reported.
func (t *table) directErr(b []int) float64 {
	sum := 0.0
	l := 0
	for i := range t.r {
		for l < t.L && i >= b[l] {
			l++
		}
		sum += t.e[l][i]
	}
	return sum
}

// autoPlan returns the auto schedule's widths for p: the best, by directly
// summed error, of the searches below. Because the greedy plan and (when its
// widths are in the set) the fitted paper plan are among the candidates, auto
// is never worse than either.
//
//   - Small problems (see exactWorkLimit) are solved exactly by dynamic
//     programming over (pair, width, bits spent).
//   - Otherwise a Lagrangian relaxation is solved exactly for the multiplier
//     λ (error per byte) found by bisection, and that plan is improved by
//     local search over band boundaries and exact search in a window around
//     them (see improve). On the tests' synthetic problems this finds the
//     exact optimum.
func autoPlan(p Problem, widths []int) []int {
	t := newTable(p, widths)
	var starts [][]int
	if t.exactWork() <= exactWorkLimit {
		starts = append(starts, t.exact())
	} else {
		starts = append(starts, t.improve(t.lagrange()))
	}
	starts = append(starts, t.greedy())
	if pb, ok := t.fromBits(fitBands(p, paperBands)); ok {
		starts = append(starts, pb)
	}
	best, bestErr := starts[0], t.directErr(starts[0])
	for _, b := range starts[1:] {
		if e := t.directErr(b); e < bestErr {
			best, bestErr = b, e
		}
	}
	return t.toBits(best)
}

// greedy returns the greedy plan: starting from nothing, repeatedly apply the
// affordable upgrade with the largest error drop per byte, until none is
// left. An upgrade raises the first pair below width w[l] to w[l], for any l,
// which keeps the widths non-increasing; bytes are counted with fractional
// code bytes (the exact cost only decides what is affordable). Ties go to the
// wider upgrade.
func (t *table) greedy() []int {
	b := make([]int, t.L)
	next := make([]int, t.L)
	for {
		bestL, bestRatio := -1, 0.0
		for l := range t.L {
			i := b[l]
			if i >= t.r {
				continue
			}
			cur := l + 1 // the width index pair i has now
			for cur < t.L && i >= b[cur] {
				cur++
			}
			gain := t.e[cur][i] - t.e[l][i]
			if gain <= 0 {
				continue
			}
			ratio := gain / (t.unit[l] - t.unit[cur])
			if ratio <= bestRatio {
				continue
			}
			copy(next, b)
			for j := l; j < cur; j++ {
				next[j] = i + 1
			}
			if t.fits(next) {
				bestL, bestRatio = l, ratio
			}
		}
		if bestL < 0 {
			return b
		}
		i := b[bestL]
		for j := bestL; j < t.L && b[j] == i; j++ {
			b[j] = i + 1
		}
	}
}

// lagrange returns the best plan within budget among the minimisers of the
// Lagrangian Σᵢ Err(i, bᵢ) + λ·unit(bᵢ) over non-increasing widths, for λ
// found by bisection (the cost of the minimiser falls as λ grows). For each λ
// the minimiser is exact, by dynamic programming over (pair, width).
func (t *table) lagrange() []int {
	choice := make([]uint8, t.r*(t.L+1))
	solve := func(lambda float64) []int {
		return t.lagrangeSolve(lambda, choice)
	}
	if b := solve(0); t.fits(b) {
		return b // the unconstrained optimum fits: nothing to trade
	}
	// Above hi every nonzero width costs more than it saves for every pair,
	// so the empty plan, which always fits, is the minimiser.
	hi := 0.0
	for i := range t.r {
		for l := range t.L {
			hi = math.Max(hi, (t.e[t.L][i]-t.e[l][i])/t.unit[l])
		}
	}
	hi = 2*hi + math.SmallestNonzeroFloat64
	lo := 0.0
	best := solve(hi)
	bestErr := t.errOf(best)
	// 200 halvings reach the resolution of float64 from any starting hi;
	// the loop usually stops far earlier on the relative width test.
	for range 200 {
		if hi-lo <= 1e-12*hi {
			break
		}
		mid := lo + (hi-lo)/2
		b := solve(mid)
		if !t.fits(b) {
			lo = mid
			continue
		}
		hi = mid
		if e := t.errOf(b); e < bestErr {
			best, bestErr = b, e
		}
	}
	return best
}

// lagrangeSolve minimises Σᵢ Err(i, bᵢ) + λ·unit(bᵢ) over non-increasing
// widths and returns the minimiser's boundaries. choice is scratch space of
// r·(L+1) entries.
func (t *table) lagrangeSolve(lambda float64, choice []uint8) []int {
	n := t.L + 1
	f := make([]float64, n)    // f[l]: best value of pairs [0, i] with pair i at width index l
	prev := make([]float64, n) // the same for pairs [0, i-1]
	for i := range t.r {
		// Pair i may take width index l if pair i-1 took an index ≤ l.
		runMin, runArg := math.Inf(1), 0
		for l := range n {
			if i > 0 && prev[l] < runMin {
				runMin, runArg = prev[l], l
			}
			base := 0.0
			if i > 0 {
				base = runMin
			}
			f[l] = base + t.e[l][i] + lambda*t.unit[l]
			choice[i*n+l] = uint8(runArg)
		}
		f, prev = prev, f
	}
	// Backtrack from the best final state.
	b := make([]int, t.L)
	if t.r == 0 {
		return b
	}
	l := 0
	for j := 1; j < n; j++ {
		if prev[j] < prev[l] {
			l = j
		}
	}
	for i := t.r - 1; i >= 0; i-- {
		for j := l; j < t.L; j++ {
			b[j]++ // pair i has width w[l] ≥ w[j]
		}
		l = int(choice[i*n+l])
	}
	return b
}

// localSteps are the boundary moves improve tries: every small step, then
// doublings for long slides.
var localSteps = []int{1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048}

// improve returns a plan within budget, with no larger error, improved from
// the plan b within budget: it alternates local search (long, cheap moves of
// one or two boundaries) and the exact optimum over a window around all
// boundaries at once, until neither helps.
func (t *table) improve(b []int) []int {
	cur := t.localSearch(b)
	for {
		next := t.window(cur, windowRadius)
		if t.errOf(next) >= t.errOf(cur)-t.errTol {
			return cur
		}
		cur = t.localSearch(next)
	}
}

// localSearch runs best-improvement local search from the plan b within
// budget and returns a plan within budget whose error is no larger. A move raises
// one boundary by a step (upgrading pairs, pushing later boundaries along);
// if that no longer fits, it lowers another boundary by the least amount that
// makes it fit again (bisection, cost being monotone), which trades bytes
// between bands; single downgrades are tried too, for non-monotone Err.
func (t *table) localSearch(b []int) []int {
	cur := slices.Clone(b)
	curErr := t.errOf(cur)
	up, down, best := make([]int, t.L), make([]int, t.L), make([]int, t.L)
	// Every accepted move lowers the error by more than errTol; the cap
	// only guards against a pathological Err.
	for range 64 * (t.r + 1) {
		bestErr := curErr - t.errTol
		found := false
		consider := func(q []int) {
			if e := t.errOf(q); e < bestErr {
				bestErr, found = e, true
				copy(best, q)
			}
		}
		for l1 := range t.L {
			for _, d := range localSteps {
				if cur[l1]+d > t.r {
					break
				}
				raise(up, cur, l1, d)
				if t.fits(up) {
					consider(up)
					continue
				}
				for l2 := range t.L {
					if l2 == l1 || up[l2] == 0 {
						continue
					}
					lower(down, up, l2, up[l2])
					if !t.fits(down) {
						continue
					}
					lo, hi := 1, up[l2] // least d2 that fits is in [lo, hi]
					for lo < hi {
						mid := lo + (hi-lo)/2
						lower(down, up, l2, mid)
						if t.fits(down) {
							hi = mid
						} else {
							lo = mid + 1
						}
					}
					lower(down, up, l2, lo)
					consider(down)
				}
			}
			if cur[l1] > 0 {
				lower(down, cur, l1, 1)
				consider(down)
			}
		}
		if !found {
			break
		}
		copy(cur, best)
		curErr = t.errOf(cur)
	}
	return cur
}

// raise sets dst to b with boundary l raised by d and later boundaries
// pushed up to keep the order.
func raise(dst, b []int, l, d int) {
	copy(dst, b)
	dst[l] += d
	for j := l + 1; j < len(dst); j++ {
		dst[j] = max(dst[j], dst[l])
	}
}

// lower sets dst to b with boundary l lowered by d and earlier boundaries
// pulled down to keep the order.
func lower(dst, b []int, l, d int) {
	copy(dst, b)
	dst[l] -= d
	for j := range l {
		dst[j] = min(dst[j], dst[l])
	}
}

// exactWorkLimit bounds the state count of the exact dynamic programme
// (pairs x widths x bits spent) that auto will run: 1e6 states take 5-10 ms
// and 1 MB of backtracking bytes, about what the search below costs at
// r = 4096. It covers every projection of the tiny test model at ratio 8 and
// above; larger problems use the Lagrangian search, whose gap to the exact
// optimum TestAutoSearchNearExact measures.
const exactWorkLimit = 1_000_000

// exactBounds returns the largest number of pairs any plan within budget can
// keep and the largest sum of widths it can spend.
func (t *table) exactBounds() (maxKept int, maxSum int64) {
	if t.L == 0 {
		return 0, 0
	}
	wMin := int64(t.w[t.L-1])
	for maxKept < t.r && t.p.cost(maxKept+1, int64(maxKept+1)*wMin) <= t.p.Budget {
		maxKept++
	}
	return maxKept, min(int64(maxKept)*int64(t.w[0]), t.maxSumFor(0))
}

// maxSumFor returns the largest sum of widths a plan keeping `kept` pairs can
// spend within budget, or -1 if keeping that many does not fit at all.
func (t *table) maxSumFor(kept int) int64 {
	if t.p.cost(kept, 0) > t.p.Budget {
		return -1
	}
	lo, hi := int64(0), int64(kept)*MaxBits
	if kept == 0 {
		hi = 8 * t.p.Budget // codes alone cost at least sum/8 bytes
	}
	for lo < hi {
		mid := hi - (hi-lo)/2
		if t.p.cost(kept, mid) <= t.p.Budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// exactWork returns the number of states exact would visit.
func (t *table) exactWork() int64 {
	k, s := t.exactBounds()
	return int64(k) * int64(t.L) * (s + 1)
}

// exact returns an optimal plan by dynamic programming: after deciding pairs
// [0, i), the state is the width index of pair i-1 and the sum of widths so
// far; a plan that stops keeping pairs after K of them is feasible when
// cost(K, sum) ≤ Budget.
func (t *table) exact() []int {
	maxKept, maxSum := t.exactBounds()
	b := make([]int, t.L)
	if maxKept == 0 {
		return b
	}
	stride := int(maxSum) + 1
	inf := math.Inf(1)
	prev := make([]float64, t.L*stride) // prev[l*stride+s]
	cur := make([]float64, t.L*stride)
	choice := make([]uint8, maxKept*t.L*stride)
	bestErr := t.pre[t.L][t.r] // keep nothing
	bestK, bestL, bestS := 0, 0, 0
	for i := range maxKept {
		for j := range cur {
			cur[j] = inf
		}
		for l := range t.L {
			w := t.w[l]
			for s := w; s < stride; s++ {
				// Predecessor: width index l' ≤ l at sum s-w (or none for i = 0).
				from, arg := inf, 0
				if i == 0 {
					if s == w {
						from = 0
					}
				} else {
					for lp := 0; lp <= l; lp++ {
						if v := prev[lp*stride+s-w]; v < from {
							from, arg = v, lp
						}
					}
				}
				if math.IsInf(from, 1) {
					continue
				}
				cur[l*stride+s] = from + t.e[l][i]
				choice[(i*t.L+l)*stride+s] = uint8(arg)
			}
		}
		// Stop after i+1 kept pairs: the rest are dropped.
		kept := i + 1
		tail := t.pre[t.L][t.r] - t.pre[t.L][kept]
		limit := int(min(t.maxSumFor(kept), maxSum))
		for l := range t.L {
			for s := 0; s <= limit; s++ {
				v := cur[l*stride+s]
				if math.IsInf(v, 1) {
					continue
				}
				if v+tail < bestErr {
					bestErr, bestK, bestL, bestS = v+tail, kept, l, s
				}
			}
		}
		prev, cur = cur, prev
	}
	// Backtrack.
	l, s := bestL, bestS
	for i := bestK - 1; i >= 0; i-- {
		for j := l; j < t.L; j++ {
			b[j]++
		}
		nl := int(choice[(i*t.L+l)*stride+s])
		s -= t.w[l]
		l = nl
	}
	return b
}

// windowRadius is how far, in pairs, window lets each boundary move from the
// current plan: ±16 pairs at every boundary at once. The work is about
// L·(2·16+1)²·(2·16·w[0]+1) ≈ 1.4e6 steps for five nonzero widths up to 8
// bits, a few milliseconds. On the synthetic spectra of the tests the optimal
// plan differs from the local-search one by up to 13 pairs per boundary;
// ±8 missed such cases, ±16 found the exact optimum in all of them.
const windowRadius = 16

// window returns the best plan within budget whose boundaries each lie
// within ±radius of b's, by dynamic programming over the boundaries in order
// with the partial sum of widths as state: the error is a sum of one term per
// boundary (see table) and the cost depends only on the last boundary and the
// total sum, so the optimum over the whole window is exact. b must fit.
func (t *table) window(b []int, radius int) []int {
	span := 2*radius + 1
	// cand(l, k) is the k-th candidate value of boundary l, or -1.
	cand := func(l, k int) int {
		v := b[l] - radius + k
		if v < 0 || v > t.r {
			return -1
		}
		return v
	}
	// Partial sums of widths are stored as offsets from b's own partial sum;
	// after boundary l they lie within ±radius·(w[0] - w[l+1]).
	sRange := 2*radius*t.w[0] + 1
	sMid := radius * t.w[0]
	inf := math.Inf(1)
	val := make([]float64, t.L*span*sRange)
	from := make([]int32, t.L*span*sRange) // predecessor (k'·sRange + s'), -1 at level 0
	for i := range val {
		val[i] = inf
	}
	at := func(l, k, s int) int { return (l*span+k)*sRange + s }
	for l := range t.L {
		dw := t.w[l] - t.w[l+1]
		for k := range span {
			v := cand(l, k)
			if v < 0 {
				continue
			}
			term := t.pre[l][v] - t.pre[l+1][v]
			ds := (v - b[l]) * dw // change of the partial sum
			if l == 0 {
				s := sMid + ds
				val[at(0, k, s)] = term
				from[at(0, k, s)] = -1
				continue
			}
			for kp := range span {
				vp := cand(l-1, kp)
				if vp < 0 || vp > v {
					continue
				}
				for sp := range sRange {
					pv := val[at(l-1, kp, sp)]
					if math.IsInf(pv, 1) {
						continue
					}
					s := sp + ds
					if s < 0 || s >= sRange {
						continue
					}
					if nv := pv + term; nv < val[at(l, k, s)] {
						val[at(l, k, s)] = nv
						from[at(l, k, s)] = int32(kp*sRange + sp)
					}
				}
			}
		}
	}
	base := t.sumBits(b)
	bestVal, bestK, bestS := inf, -1, -1
	last := t.L - 1
	for k := range span {
		v := cand(last, k)
		if v < 0 {
			continue
		}
		for s := range sRange {
			x := val[at(last, k, s)]
			if x < bestVal && t.p.cost(v, base+int64(s-sMid)) <= t.p.Budget {
				bestVal, bestK, bestS = x, k, s
			}
		}
	}
	out := make([]int, t.L)
	if bestK < 0 {
		copy(out, b) // cannot happen when b fits: b itself is in the window
		return out
	}
	k, s := bestK, bestS
	for l := last; l >= 0; l-- {
		out[l] = cand(l, k)
		f := from[at(l, k, s)]
		if f >= 0 {
			k, s = int(f)/sRange, int(f)%sRange
		}
	}
	return out
}
