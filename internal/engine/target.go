package engine

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
)

// An error target (CompressOptions.MaxError) is met in two passes over the
// lossy projections, so that no more than the pool's tensors are in memory
// at once:
//
//  1. curves: for each projection, one SVD and the allocation at every
//     budget of svdquant.LadderBudgets give its predicted squared error
//     versus bytes (svdquant.Curve); only these few numbers are kept.
//  2. one budget per projection is chosen (chooseBudgets): the fewest total
//     bytes found whose predicted aggregate error sqrt(Σ err² / Σ |Delta|²)
//     is at most the target, less targetMargin, either with one ratio for
//     every projection (BudgetMatrix) or with each projection's budget free
//     within a trust region around that (BudgetModel, the default).
//     Compress then encodes each projection with its budget. A projection
//     whose measured error exceeds its share of the target (its predicted
//     error scaled so that the shares add up to the target) is encoded
//     again at the next budget of its ladder until it fits, so the
//     archive's recorded aggregate error is at most the target whatever the
//     prediction's accuracy.
//
// A ratio with BudgetModel takes the same first pass over the budgets of
// svdquant.ShareBudgets and chooses the least predicted error whose budgets
// add up to at most the shares' (spendBudget); nothing is re-encoded.
//
// Every step is a function of the inputs and the flags alone, so the archive
// is the same for any worker count.

// targetMargin is the share of the squared error target held back from the
// allocation, so that a measured error a little above its prediction
// (quantization errors of different pairs are not exactly orthogonal) does
// not make a projection step up its ladder. The prediction was within 0.1%
// of the squared error on synthetic deltas (svdquant.TestCurvePredictsEncode)
// and within 0.03% on the tiny-llama pair; 0.5% costs about 0.5% of bytes
// (bytes go about as the squared error to the power -1.1 there).
const targetMargin = 0.005

// targetPlan is the outcome of pass 1.
type targetPlan struct {
	maxError float64 // 0 for a model-wide budget at a ratio
	budget   string  // the budget mode
	tensors  map[string]*targetTensor
	// Predicted totals of the chosen budgets, over the lossy tensors.
	predSqErr, normSq float64
	predBytes         int64
	lossy             int
}

// targetTensor is pass 1's record of one lossy projection.
type targetTensor struct {
	ladder []int64     // candidate budgets, increasing
	curve  alloc.Curve // predicted bytes and squared error at each
	normSq float64     // |Delta|_F^2
	choice int         // chosen ladder index
	allow  float64     // the squared error it may have in the archive
}

// predictedRelError is the aggregate relative error pass 1 predicts.
func (p *targetPlan) predictedRelError() float64 {
	if p.normSq == 0 {
		return 0
	}
	return math.Sqrt(p.predSqErr / p.normSq)
}

// planTarget runs pass 1 for opt.MaxError, or for opt.Ratio with
// BudgetModel, over the tensors of ft that Compress stores lossily. It
// returns an error wrapping ErrUsage when the target is below the least
// error the ladder reaches.
func planTarget(ctx context.Context, base, ft *checkpoint.Checkpoint, opt *CompressOptions) (*targetPlan, error) {
	var names []string
	for _, n := range ft.Names() {
		if class, _ := classify(base, ft, n, opt); class == classLossy { // errors refused by checkClasses
			names = append(names, n)
		}
	}
	workers := opt.Workers
	if workers < 1 {
		workers = defaultWorkers(ft)
	}
	p := &targetPlan{maxError: opt.MaxError, budget: opt.budgetMode(), tensors: make(map[string]*targetTensor, len(names))}
	work := func(_ context.Context, i int) (*targetTensor, error) {
		tt, err := curveOf(base, ft, names[i], opt)
		ft.Release(names[i])
		base.Release(names[i])
		return tt, err
	}
	var curves []alloc.Curve
	fp, _ := opt.Progress.(FirstPassProgress)
	consume := func(i int, tt *targetTensor) error {
		p.tensors[names[i]] = tt
		curves = append(curves, tt.curve)
		p.normSq += tt.normSq
		if fp != nil {
			fp.FirstPass(i+1, len(names), names[i])
		}
		return nil
	}
	if err := ordered(ctx, len(names), workers, work, consume); err != nil {
		return nil, err
	}
	p.lossy = len(names)
	tts := make([]*targetTensor, len(names))
	for i, n := range names {
		tts[i] = p.tensors[n]
	}
	if opt.MaxError == 0 { // --ratio with BudgetModel
		for i, c := range spendBudget(tts, curves) {
			tts[i].choice, tts[i].allow = c, math.Inf(1)
			p.predSqErr += tts[i].curve.SqErr[c]
			p.predBytes += tts[i].curve.Bytes[c]
		}
		return p, nil
	}
	limit := opt.MaxError * opt.MaxError * p.normSq
	choice, ok := chooseBudgets(tts, curves, limit*(1-targetMargin), opt.budgetMode())
	for i, n := range names {
		tt := p.tensors[n]
		tt.choice = choice[i]
		p.predSqErr += tt.curve.SqErr[tt.choice]
		p.predBytes += tt.curve.Bytes[tt.choice]
	}
	if !ok {
		return nil, errorf(ErrUsage, "--max-error %g cannot be reached: the least aggregate error of the projections, each at up to fp16 size / %d, is %.4f (use a larger --max-error, or --lossless)",
			opt.MaxError, svdquant.LadderMinRatio, p.predictedRelError())
	}
	// Each tensor's share of the target: its predicted error scaled up so
	// that the shares add up to the target (by norm when nothing is
	// predicted). The factor just under 1 absorbs the rounding of the sums.
	const roundingSlack = 1 - 1e-9
	for _, n := range names {
		tt := p.tensors[n]
		if p.predSqErr > 0 {
			tt.allow = tt.curve.SqErr[tt.choice] * (limit / p.predSqErr) * roundingSlack
		} else {
			tt.allow = tt.normSq * (limit / p.normSq) * roundingSlack
		}
	}
	return p, nil
}

// curveOf returns pass 1's record of the projection name: its ladder and
// predicted curve. A projection equal to its base (stored as nothing) has a
// zero curve.
func curveOf(base, ft *checkpoint.Checkpoint, name string, opt *CompressOptions) (*targetTensor, error) {
	t, _ := ft.Tensor(name)
	bt, _ := base.Tensor(name)
	rows, cols := int(t.Shape[0]), int(t.Shape[1])
	data, err := ft.Data(name)
	if err != nil {
		return nil, errorf(ErrInput, "fine-tune: %w", err)
	}
	bdata, err := base.Data(name)
	if err != nil {
		return nil, errorf(ErrInput, "base: %w", err)
	}
	tt := &targetTensor{ladder: opt.ladder(rows, cols)}
	if bt.DType == t.DType && bytes.Equal(bdata, data) {
		tt.curve = alloc.Curve{Bytes: make([]int64, len(tt.ladder)), SqErr: make([]float64, len(tt.ladder))}
		return tt, nil
	}
	delta := make([]float32, rows*cols)
	if err := svdquant.Delta(delta, data, t.DType, bdata, bt.DType); err != nil {
		return nil, errorf(ErrInput, "tensor %q: %w", name, err)
	}
	tt.curve, tt.normSq, err = svdquant.Curve(delta, rows, cols, tt.ladder, opt.encodeOptions(), opt.grid() == GridSym)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return tt, nil
}

// encodeOptions returns the svdquant options of opt's ratio.
func (opt *CompressOptions) encodeOptions() svdquant.Options {
	return svdquant.Options{Ratio: opt.Ratio, Schedule: opt.Schedule, GroupSize: opt.GroupSize, SVD: opt.SVD, Refit: opt.Refit}
}

// storeTarget stores the projection of e (delta, rows x cols) at the budget
// pass 1 chose for it, stepping up its ladder while the measured squared
// error exceeds its share of the target (see planTarget).
func (e *encoded) storeTarget(delta []float32, rows, cols int, opt CompressOptions) error {
	tt := opt.target.tensors[e.rec.Name]
	if tt == nil {
		panic(fmt.Sprintf("engine: tensor %q has no target budget", e.rec.Name))
	}
	o := opt.encodeOptions()
	o.Ratio = 0 // MaxBytes is the budget
	for k := tt.choice; ; k++ {
		o.MaxBytes = tt.ladder[k]
		e.blobs = e.blobs[:0]
		if err := e.store(opt.kind().Name, &storage.Input{Delta: delta, Rows: rows, Cols: cols, Options: o}); err != nil {
			return err
		}
		rel, norm, _ := e.rec.DeltaError()
		if sq := (rel * norm) * (rel * norm); sq <= tt.allow || k == len(tt.ladder)-1 {
			return nil
		}
		e.targetSteps++
	}
}

// checkTarget returns an error when the archive's aggregate error, from the
// records' squared errors and norms, is above the target: nothing is then
// written. With the step-ups of storeTarget this happens only when a
// projection misses its share even at the top of its ladder.
func (p *targetPlan) checkTarget(errSq, normSq float64) error {
	if p == nil || p.maxError == 0 || normSq == 0 {
		return nil
	}
	if got := math.Sqrt(errSq / normSq); got > p.maxError {
		return errorf(ErrUsage, "the archive's aggregate error %.5f is above --max-error %g even with the largest budgets of the projections that missed their share; nothing written (use a larger --max-error, or --lossless)",
			got, p.maxError)
	}
	return nil
}

// validateTarget checks MaxError and Budget and what they cannot be
// combined with.
func (opt *CompressOptions) validateTarget() error {
	e := opt.MaxError
	switch {
	case opt.Budget != "" && !slices.Contains(BudgetModes, opt.Budget):
		return errorf(ErrUsage, "unknown budget mode %q (want model or matrix)", opt.Budget)
	case e != 0 && !(e > 0 && e < 1):
		return errorf(ErrUsage, "max error must be between 0 and 1 (a relative error), got %v", e)
	case !opt.firstPass():
		return nil
	case opt.method() != MethodDeltaCoMe:
		return errorf(ErrUsage, "an error target or a model-wide budget applies to method deltacome only, not %s", opt.method())
	case opt.Shard.sharded():
		return errorf(ErrUsage, "an error target or a model-wide budget chooses every projection's budget from all of them, so it cannot be split into parts")
	}
	return nil
}

// TargetEstimate is what Compress's first pass predicts for an error
// target: estimates from the allocation, before any encoding. The archive's
// projections take about the predicted bytes (each plan fills its budget
// nearly to the byte) unless one misses its share of the target and steps
// up its ladder.
type TargetEstimate struct {
	// MaxError is the target; 0 for a model-wide budget at a ratio.
	MaxError float64
	// Budget is the budget mode (BudgetModel or BudgetMatrix).
	Budget string
	// RelError is the predicted aggregate relative error of the chosen
	// budgets, a little below MaxError (targetMargin).
	RelError float64
	// LossyTensors counts the projections; LossyBytes is the sum of their
	// predicted bytes, Budgets of their chosen budgets.
	LossyTensors        int
	LossyBytes, Budgets int64
	// LadderPoints is the number of candidate budgets of each projection:
	// its fp16 size / R for R from MaxRatio down to MinRatio, evenly
	// spaced in log R (for a ratio, MinRatio and MaxRatio are 0 and the
	// budgets svdquant.ShareBudgets).
	LadderPoints, MinRatio, MaxRatio int
}

// estimate returns the plan's TargetEstimate.
func (p *targetPlan) estimate() *TargetEstimate {
	e := &TargetEstimate{MaxError: p.maxError, Budget: p.budget, RelError: p.predictedRelError(), LossyTensors: p.lossy, LossyBytes: p.predBytes,
		LadderPoints: len(svdquant.LadderBudgets(1, 1)), MinRatio: svdquant.LadderMinRatio, MaxRatio: svdquant.LadderMaxRatio}
	if p.maxError == 0 {
		e.LadderPoints, e.MinRatio, e.MaxRatio = len(svdquant.ShareBudgets(1, 1, 1)), 0, 0
	}
	for _, tt := range p.tensors {
		e.Budgets += tt.ladder[tt.choice]
	}
	return e
}

// budgetOf returns the budget chosen for the lossy tensor name and the
// bytes its plan is predicted to take.
func (p *targetPlan) budgetOf(name string) (budget, predicted int64) {
	tt := p.tensors[name]
	return tt.ladder[tt.choice], tt.curve.Bytes[tt.choice]
}

// Budget modes of an error target (CompressOptions.Budget).
const (
	// BudgetModel spreads the bytes over the projections by equal slope
	// (alloc.TargetWithin), each projection's budget within
	// [clampLow, clampHigh] times its share at one common ratio, the
	// common ratio that gives the fewest bytes.
	BudgetModel = "model"
	// BudgetMatrix gives every projection the same ratio: the smallest of
	// the ladder whose predicted aggregate error meets the target.
	BudgetMatrix = "matrix"
)

// BudgetModes lists the budget modes, the default first.
var BudgetModes = []string{BudgetModel, BudgetMatrix}

// The trust region of BudgetModel. Minimising the aggregate squared error
// with budgets left free starves the projections whose deltas are small in
// norm but matter to the model (torch studies of Llama pairs: v_proj, with
// a loss of task accuracy at ratio 64); holding each budget within
// 0.75-1.5x of an even share keeps most of the gain (docs/TARGET.md).
const (
	clampLow  = 0.75
	clampHigh = 1.5
)

// budgetMode returns opt.Budget, "" meaning BudgetModel with MaxError and
// BudgetMatrix without.
func (opt *CompressOptions) budgetMode() string {
	switch {
	case opt.Budget != "":
		return opt.Budget
	case opt.MaxError > 0:
		return BudgetModel
	}
	return BudgetMatrix
}

// firstPass reports whether Compress chooses the budgets in a first pass:
// for an error target, or for one budget across the model at a ratio.
func (opt *CompressOptions) firstPass() bool {
	return opt.Mode == ModeDeltaCoMe && (opt.MaxError > 0 || opt.budgetMode() == BudgetModel)
}

// ladder returns the candidate budgets of a rows x cols projection: the
// whole ladder for an error target, the trust region around its share of
// the ratio's budget otherwise.
func (opt *CompressOptions) ladder(rows, cols int) []int64 {
	if opt.MaxError > 0 {
		return svdquant.LadderBudgets(rows, cols)
	}
	return svdquant.ShareBudgets(rows, cols, opt.Ratio)
}

// spendBudget returns, for --ratio with BudgetModel, the ladder index of
// each tensor (ladders from svdquant.ShareBudgets) that gives the least
// predicted aggregate error whose budgets add up to at most the sum of the
// shares, so that the projections' stored bytes stay within Σ fp16 size /
// ratio. It bisects on the error bound of alloc.Target, whose curves count
// the budgets themselves as the bytes, and keeps the best choice within
// the total; the shares themselves are the fallback.
func spendBudget(tts []*targetTensor, curves []alloc.Curve) []int {
	byBudget := make([]alloc.Curve, len(tts))
	best := make([]int, len(tts))
	var total int64
	bestErr := 0.0
	for j, tt := range tts {
		byBudget[j] = alloc.Curve{Bytes: tt.ladder, SqErr: curves[j].SqErr}
		best[j] = svdquant.ShareIndex
		total += tt.ladder[svdquant.ShareIndex]
		bestErr += curves[j].SqErr[svdquant.ShareIndex]
	}
	sum := func(choice []int) (bytes int64, sqErr float64) {
		for j, k := range choice {
			bytes += tts[j].ladder[k]
			sqErr += curves[j].SqErr[k]
		}
		return bytes, sqErr
	}
	lo, hi := 0.0, bestErr
	// 64 halvings take the bound to float64 resolution from any start.
	for range 64 {
		mid := lo + (hi-lo)/2
		c, ok := alloc.Target(byBudget, mid)
		b, e := sum(c)
		if !ok || b > total {
			lo = mid
			continue
		}
		hi = mid
		if e < bestErr {
			best, bestErr = c, e
		}
	}
	return best
}

// chooseBudgets returns the ladder index of each tensor for the squared
// error bound maxSqErr in mode, and false (with each tensor's least-error
// point) when no choice meets it. Every tensor's ladder has the same
// length, index k meaning the same ratio.
func chooseBudgets(tts []*targetTensor, curves []alloc.Curve, maxSqErr float64, mode string) ([]int, bool) {
	if len(tts) == 0 {
		return nil, true
	}
	n := len(tts[0].ladder)
	total := func(choice []int) (bytes int64, sqErr float64) {
		for j, c := range curves {
			bytes += c.Bytes[choice[j]]
			sqErr += c.SqErr[choice[j]]
		}
		return bytes, sqErr
	}
	uniform := func(k int) []int {
		c := make([]int, len(tts))
		for j := range c {
			c[j] = k
		}
		return c
	}
	switch mode {
	case BudgetMatrix:
		for k := range n {
			if _, e := total(uniform(k)); e <= maxSqErr {
				return uniform(k), true
			}
		}
	case BudgetModel:
		var best []int
		var bestBytes int64
		lo, hi := make([]int, len(tts)), make([]int, len(tts))
		for k := range n {
			for j, tt := range tts {
				lo[j], hi[j] = k, k
				for lo[j] > 0 && float64(tt.ladder[lo[j]-1]) >= clampLow*float64(tt.ladder[k]) {
					lo[j]--
				}
				for hi[j] < n-1 && float64(tt.ladder[hi[j]+1]) <= clampHigh*float64(tt.ladder[k]) {
					hi[j]++
				}
			}
			c, ok := alloc.TargetWithin(curves, lo, hi, maxSqErr)
			if !ok {
				continue
			}
			if b, _ := total(c); best == nil || b < bestBytes {
				best, bestBytes = c, b
			}
		}
		if best != nil {
			return best, true
		}
	default:
		panic(fmt.Sprintf("engine: unknown budget mode %q", mode))
	}
	return uniform(n - 1), false
}
