package svdquant

import (
	"fmt"
	"math"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/linalg"
)

// Ladder bounds and density of the budgets an error target chooses from
// (LadderBudgets). Ratio 8 is the most bytes: a budget past it needs a
// search space near the matrix's short side, where the truncated SVD of
// pass 1 turns into a full one (minutes and gigabytes for each 7B
// projection); an error that needs more bytes is served by --ratio. Ratio
// 1024 is below one pair of most projections.
// Eight steps per octave make neighbouring budgets 9% apart: with tens of
// matrices or more the choice between two steps of one matrix changes the
// total by a small fraction of that.
const (
	LadderMinRatio = 8
	LadderMaxRatio = 1024
	LadderSteps    = 8 // budgets per halving of the ratio
)

// LadderBudgets returns the candidate byte budgets of a rows x cols matrix
// for an error target, increasing: Budget(rows, cols, R) for R from
// LadderMaxRatio down to LadderMinRatio, LadderSteps ratios per octave.
// Budgets repeated by rounding are kept, so that index k means the same
// ratio for every matrix.
func LadderBudgets(rows, cols int) []int64 {
	octaves := math.Log2(LadderMaxRatio / LadderMinRatio)
	n := int(octaves)*LadderSteps + 1
	out := make([]int64, n)
	for k := range out {
		ratio := LadderMaxRatio / math.Exp2(float64(k)/LadderSteps)
		out[k] = Budget(rows, cols, ratio)
	}
	return out
}

// Curve returns, for each of the increasing budgets, the bytes and the
// total squared error |Delta - Delta_hat|_F^2 that Encode with that budget
// (Options.MaxBytes, Ratio 0) is predicted to give for delta, and |Delta|_F^2. It
// runs one truncated SVD, at the rank the largest budget needs, and the
// schedule's allocation at every budget from the measured error of each
// singular vector pair at each width (the allocator's own prediction: pairs'
// errors add up, pairs past a budget's SVD rank count as dropped, the
// spectrum's tail beyond the computed rank as error). No vector is encoded,
// so the prediction differs from Encode's measured error by the
// interaction of the pairs' quantization errors: within 0.1% of the squared
// error on the tests' synthetic deltas (TestCurvePredictsEncode).
//
// sym selects the symmetric grid's layout and measurements (EncodeSym at
// Refit 0; a refit only lowers the error below the prediction), else the
// asymmetric one (Encode).
func Curve(delta []float32, rows, cols int, budgets []int64, opt Options, sym bool) (c alloc.Curve, normSq float64, err error) {
	g := opt.GroupSize
	normSq = sumSq(delta)
	c = alloc.Curve{Bytes: make([]int64, len(budgets)), SqErr: make([]float64, len(budgets))}
	if len(budgets) == 0 || normSq == 0 {
		return c, normSq, nil
	}
	var top int64
	for _, b := range budgets {
		top = max(top, b)
	}
	svdRank, layout := SVDRank, alloc.LayoutAsym
	if sym {
		svdRank, layout = SVDRankSym, alloc.LayoutSym
	}
	rank := svdRank(rows, cols, g, top)
	for k := range c.SqErr {
		c.SqErr[k] = normSq
	}
	if rank == 0 {
		return c, normSq, nil
	}
	svd, err := linalg.Truncated(delta, rows, cols, rank, opt.SVD)
	if err != nil {
		return c, normSq, fmt.Errorf("svd: %w", err)
	}
	sigma := make([]float64, svd.Rank)
	kept := 0.0
	for i := range sigma {
		sigma[i] = float64(svd.S[i])
		kept += sigma[i] * sigma[i]
	}
	tail := max(normSq-kept, 0) // beyond the computed rank
	m := newMeasurer(svd, g, opt.Workers)
	m.sym = sym
	for k, b := range budgets {
		r := min(svdRank(rows, cols, g, b), len(sigma))
		plan := opt.Schedule.Plan(alloc.Problem{Rows: rows, Cols: cols, GroupSize: g, Layout: layout, Budget: b, Sigma: sigma[:r], Err: m.err})
		dropped := tail
		for i := r; i < len(sigma); i++ {
			dropped += sigma[i] * sigma[i]
		}
		c.Bytes[k], c.SqErr[k] = plan.Bytes, min(plan.SqErr+dropped, normSq)
	}
	return c, normSq, nil
}

// budget returns the byte budget Encode works to.
func (opt Options) budget(rows, cols int) int64 {
	if opt.Ratio == 0 {
		return opt.MaxBytes
	}
	return Budget(rows, cols, opt.Ratio)
}

// ShareIndex is the index, in ShareBudgets, of the share itself.
const ShareIndex = 3

// ShareBudgets returns the candidate budgets of a rows x cols matrix whose
// share of a model-wide budget is Budget(rows, cols, ratio), increasing:
// LadderSteps per octave from 0.77x to 1.41x of the share (the share
// itself at ShareIndex), the steps of the ladder that lie within the
// trust region 0.75-1.5x.
func ShareBudgets(rows, cols int, ratio float64) []int64 {
	out := make([]int64, 0, 8)
	for s := -ShareIndex; s <= 4; s++ {
		out = append(out, Budget(rows, cols, ratio/math.Exp2(float64(s)/LadderSteps)))
	}
	return out
}
