package alloc

import (
	"fmt"
	"math"
)

// Problem describes the allocation for one matrix: its shape, its byte budget
// and what each choice of code width would cost in reconstruction error.
type Problem struct {
	// Rows and Cols are m and n, the matrix shape: left singular vectors
	// have Rows entries, right ones Cols.
	Rows, Cols int
	// GroupSize is the quantization group length in entries along each
	// vector; 0 means DefaultGroupSize in LayoutAsym, one group per vector
	// in LayoutSym.
	GroupSize int
	// Layout is the storage layout whose bytes the budget counts (Cost or
	// CostSym); the zero value is LayoutAsym.
	Layout Layout
	// Budget is the most bytes the matrix may take, as counted by Cost
	// (CostSym in LayoutSym);
	// for a ratio R on an fp16 matrix it is Rows·Cols·2/R.
	Budget int64
	// Sigma holds the singular values available to keep, non-increasing and
	// non-negative; r = len(Sigma) pairs can be kept at most.
	Sigma []float64
	// Err(i, bits) is the squared Frobenius error, in the squared units of
	// the matrix, of pair i (0 ≤ i < r) quantized at `bits` bits per entry,
	// relative to its exact contribution Sigma[i]·u_i·v_iᵀ, as measured by
	// the caller. Err(i, 0) must be Sigma[i]², the error of dropping the
	// pair. Values must be finite and non-negative, and the same for the
	// same arguments. Plan calls Err for every pair at 0 and at each width
	// the schedule can choose, plus once per pair to total the plan: at most
	// r·(MaxBits+2) calls, so Err should look up errors measured beforehand.
	Err func(i, bits int) float64
}

// Plan is the decision for one matrix.
type Plan struct {
	// Bits[i] is the code width, in bits per entry, of singular vector pair
	// i; 0 drops it. Bits is non-increasing and has no trailing zeros, so
	// len(Bits) ≤ len(Problem.Sigma) is the number of pairs kept.
	Bits []int
	// Bytes is Cost(Rows, Cols, GroupSize, Bits) (CostSym in LayoutSym),
	// never above the budget.
	Bytes int64
	// SqErr is Σ_{i<r} Problem.Err(i, Bits[i]) (Bits[i] = 0 past the end),
	// the total squared error of the plan in the squared units of the
	// matrix, assuming the pairs' errors add up.
	SqErr float64
}

// Plan returns the plan s makes for p; it never exceeds p.Budget.
//
//   - auto minimises Σ Err(i, bᵢ) over non-increasing widths bᵢ taken from
//     its width set and 0, subject to Cost ≤ Budget. Problems of up to about
//     a million (pairs x widths x bits) states are solved exactly; larger
//     ones by a search that found the exact optimum on every synthetic
//     problem tested. Its plan is never worse than greedy's or paper's
//     (when paper's widths are in its set): both are among its candidates.
//   - greedy starts from nothing and repeatedly applies the affordable
//     upgrade, to any wider width in its set, of the first pair below that
//     width with the largest error drop per byte.
//   - an explicit list fills its bands in order: each band keeps as many of
//     the next pairs as its count, the pairs left and the budget allow, and
//     "rest" as many as the pairs left and the budget allow. A band cut
//     short by the budget does not stop later, narrower bands from using
//     what is left.
//   - paper is the paper's schedule 8:2,3:32,2:rest filled like an explicit
//     list, so it fits any budget (see paperBands).
//
// Plan panics on programmer errors in p: a non-positive shape, a negative
// group size or budget, Sigma increasing or negative or NaN, a nil Err, or
// Err returning a negative or non-finite value.
func (s Schedule) Plan(p Problem) Plan {
	p.check()
	var bits []int
	switch s.kind {
	case kindAuto:
		bits = autoPlan(p, s.widthSet())
	case kindGreedy:
		t := newTable(p, s.widthSet())
		bits = t.toBits(t.greedy())
	case kindPaper:
		bits = fitBands(p, paperBands)
	case kindList:
		bits = fitBands(p, s.bands)
	default:
		panic(fmt.Sprintf("alloc: unknown schedule kind %d", s.kind))
	}
	return p.finish(bits)
}

// groupSize returns the effective group size of p.
func (p Problem) groupSize() int {
	if p.GroupSize == 0 && p.Layout != LayoutSym {
		return DefaultGroupSize
	}
	return p.GroupSize
}

// check panics on the programmer errors Schedule.Plan documents.
func (p Problem) check() {
	if p.GroupSize < 0 {
		panic(fmt.Sprintf("alloc: negative group size %d", p.GroupSize))
	}
	checkShape(p.Rows, p.Cols, max(p.groupSize(), 1))
	if p.Budget < 0 {
		panic(fmt.Sprintf("alloc: negative budget %d", p.Budget))
	}
	if p.Err == nil {
		panic("alloc: Problem.Err is nil")
	}
	for i, s := range p.Sigma {
		if !(s >= 0) || math.IsInf(s, 0) || (i > 0 && s > p.Sigma[i-1]) {
			panic(fmt.Sprintf("alloc: Sigma[%d] = %v: singular values must be finite, non-negative and non-increasing", i, s))
		}
	}
}

// err calls p.Err and panics if the caller's function breaks its contract.
func (p Problem) err(i, bits int) float64 {
	e := p.Err(i, bits)
	if !(e >= 0) || math.IsInf(e, 0) {
		panic(fmt.Sprintf("alloc: Err(%d, %d) = %v, want finite and non-negative", i, bits, e))
	}
	return e
}

// cost returns the exact cost of a plan keeping `kept` pairs with widths
// adding up to sumBits.
func (p Problem) cost(kept int, sumBits int64) int64 {
	return costOf(p.Rows, p.Cols, p.groupSize(), p.Layout, kept, sumBits)
}

// finish trims bits, checks it and fills in the Plan.
func (p Problem) finish(bits []int) Plan {
	for len(bits) > 0 && bits[len(bits)-1] == 0 {
		bits = bits[:len(bits)-1]
	}
	if len(bits) > len(p.Sigma) {
		panic(fmt.Sprintf("alloc: internal error: %d widths for %d pairs", len(bits), len(p.Sigma)))
	}
	for i := 1; i < len(bits); i++ {
		if bits[i] > bits[i-1] {
			panic(fmt.Sprintf("alloc: internal error: widths increase at %d: %v", i, bits))
		}
	}
	var bytes int64
	if p.Layout == LayoutSym {
		bytes = CostSym(p.Rows, p.Cols, p.groupSize(), bits)
	} else {
		bytes = Cost(p.Rows, p.Cols, p.groupSize(), bits)
	}
	if bytes > p.Budget {
		panic(fmt.Sprintf("alloc: internal error: plan costs %d bytes, budget %d", bytes, p.Budget))
	}
	return Plan{Bits: bits, Bytes: bytes, SqErr: p.sqErr(bits)}
}

// sqErr returns the total squared error of bits (0 past its end), summed
// directly so that plans compare exactly.
func (p Problem) sqErr(bits []int) float64 {
	sum := 0.0
	for i := range p.Sigma {
		b := 0
		if i < len(bits) {
			b = bits[i]
		}
		sum += p.err(i, b)
	}
	return sum
}

// fitBands fills bands in order (see Schedule.Plan) and returns the widths.
func fitBands(p Problem, bands []band) []int {
	r := len(p.Sigma)
	var bits []int
	kept, sum := 0, int64(0)
	for _, b := range bands {
		want := r - kept
		if b.count != rest {
			want = min(want, b.count)
		}
		// The largest k ≤ want with cost(kept+k, sum+k·bits) ≤ Budget, by
		// bisection: cost is increasing in k.
		lo, hi := 0, want
		for lo < hi {
			mid := hi - (hi-lo)/2
			if p.cost(kept+mid, sum+int64(mid*b.bits)) <= p.Budget {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		for range lo {
			bits = append(bits, b.bits)
		}
		kept += lo
		sum += int64(lo * b.bits)
	}
	return bits
}

// paperBands is the paper's released schedule for Llama-2-7B (pairs [0,2) at
// 8 bit, [2,34) at 3 bit, then 2 bit: up to pair 1002 for attention, 1462
// for the MLP), which spends 2·8 + 32·3 + 968·2 = 2048 bits per entry-pair
// on a 4096 x 4096 matrix, exactly its fp16 size / 16 counting code bits
// only.
//
// Fitting rule: the bands are filled in order like the explicit list
// 8:2,3:32,2:rest, each capped by the pairs left and the honest budget, so
// the paper's own counts are kept whenever they fit and the 2-bit band runs
// as far as the budget allows. At the paper's shapes the result is its
// schedule with the 2-bit band cut to what the scales and sigmas leave room
// for (855 instead of 968 pairs at 4096 x 4096, ratio 16); on small or GQA
// matrices the 2-bit band shrinks first, then the 3-bit band.
//
// The alternative of scaling the 8- and 3-bit counts with the budget (keeping
// the share of the budget the paper gives them) was measured and rejected:
// with the default round-to-nearest quantizer, whose 2-bit codes lose about
// half a pair's energy, it gave a larger error on every small shape tested
// (see TestCompareSchedules).
var paperBands = []band{{bits: 8, count: 2}, {bits: 3, count: 32}, {bits: 2, count: rest}}
