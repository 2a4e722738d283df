package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// recordedError returns the aggregate relative error an archive records
// over its lossy tensors, and its size on disk.
func recordedError(t *testing.T, path string) (relError float64, size int64) {
	t.Helper()
	r, err := archive.Open(path)
	require.NoError(t, err)
	defer r.Close()
	var errSq, normSq float64
	for i := range r.Manifest.Tensors {
		if rel, norm, ok := r.Manifest.Tensors[i].DeltaError(); ok {
			errSq += (rel * norm) * (rel * norm)
			normSq += norm * norm
		}
	}
	st, err := os.Stat(path)
	require.NoError(t, err)
	return math.Sqrt(errSq / normSq), st.Size()
}

// oneLayerOpts are deltaOpts at ratio with the projections of the first
// layer of the bundled pair selected: 7 real projections of every shape,
// a quarter of the time.
func oneLayerOpts(t *testing.T, ratio float64) CompressOptions {
	opt := deltaOpts(t, ratio, "auto")
	sel, err := NewSelector([]string{`^model\.layers\.0\..*_proj\.weight$`}, nil)
	require.NoError(t, err)
	opt.Select = sel
	return opt
}

// TestMaxErrorTiny compresses the bundled pair to error targets: the
// archive's recorded aggregate error must be at most the target, a looser
// target must give a smaller archive, and the settings record the target.
func TestMaxErrorTiny(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var prevSize int64
	for _, target := range []float64{0.3, 0.4} {
		opt := oneLayerOpts(t, 16)
		opt.MaxError = target
		out := filepath.Join(dir, "t.dcm")
		opt.Overwrite = true
		sum, err := Compress(ctx, tinyBase, tinyFT, out, opt)
		require.NoError(t, err)
		got, size := recordedError(t, out)
		t.Logf("target %.2f: recorded error %.5f, summary %.5f, archive %d bytes", target, got, sum.AggRelError, size)
		assert.LessOrEqual(t, got, target)
		assert.InDelta(t, sum.AggRelError, got, 1e-9)
		// The allocation aims 0.25% below the target (targetMargin on the
		// squared error); it lands within 1%.
		assert.Greater(t, got, 0.99*target)
		if prevSize > 0 {
			assert.Less(t, size, prevSize, "target %v", target)
		}
		prevSize = size
		r, err := archive.Open(out)
		require.NoError(t, err)
		assert.Equal(t, target, r.Manifest.Settings.MaxError)
		assert.Zero(t, r.Manifest.Settings.Ratio)
		r.Close()
	}
}

func TestMaxErrorRefused(t *testing.T) {
	ctx := context.Background()
	out := filepath.Join(t.TempDir(), "t.dcm")
	for _, tc := range []struct {
		name string
		edit func(*CompressOptions)
	}{
		{"zero-below", func(o *CompressOptions) { o.MaxError = -0.1 }},
		{"one", func(o *CompressOptions) { o.MaxError = 1 }},
		{"nan", func(o *CompressOptions) { o.MaxError = math.NaN() }},
		{"bitdelta", func(o *CompressOptions) { o.MaxError, o.Method = 0.3, MethodBitDelta }},
		{"shard", func(o *CompressOptions) { o.MaxError, o.Shard = 0.3, Shard{Index: 1, Count: 2} }},
		{"budget", func(o *CompressOptions) { o.MaxError, o.Budget = 0.3, "tensor" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := deltaOpts(t, 16, "auto")
			tc.edit(&opt)
			_, err := Compress(ctx, tinyBase, tinyFT, out, opt)
			require.ErrorIs(t, err, ErrUsage)
			assert.NoFileExists(t, out)
		})
	}
}

// TestRatioModelBudget compresses the bundled pair at ratio 32 with one
// budget across the model: the projections together stay within the sum
// of their fp16 size / 32, each within 0.75-1.5x of it, and the aggregate
// error is below the per-matrix archive's.
func TestRatioModelBudget(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const ratio = 32
	perMatrix := filepath.Join(dir, "matrix.dcm")
	_, err := Compress(ctx, tinyBase, tinyFT, perMatrix, oneLayerOpts(t, ratio))
	require.NoError(t, err)
	model := filepath.Join(dir, "model.dcm")
	opt := oneLayerOpts(t, ratio)
	opt.Budget = BudgetModel
	_, err = Compress(ctx, tinyBase, tinyFT, model, opt)
	require.NoError(t, err)

	r, err := archive.Open(model)
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, BudgetModel, r.Manifest.Settings.Budget)
	assert.Equal(t, float64(ratio), r.Manifest.Settings.Ratio)
	var stored, shares int64
	for i := range r.Manifest.Tensors {
		tn := &r.Manifest.Tensors[i]
		if tn.LowRank == nil {
			continue
		}
		share := svdquant.Budget(int(tn.Shape[0]), int(tn.Shape[1]), ratio)
		shares += share
		stored += tn.StoredBytes()
		assert.GreaterOrEqual(t, float64(tn.LowRank.Budget), clampLow*float64(share), tn.Name)
		assert.LessOrEqual(t, float64(tn.LowRank.Budget), clampHigh*float64(share), tn.Name)
	}
	assert.LessOrEqual(t, stored, shares)
	got, _ := recordedError(t, model)
	want, _ := recordedError(t, perMatrix)
	t.Logf("ratio %d: per-matrix error %.5f, model %.5f; %d of %d bytes", ratio, want, got, stored, shares)
	assert.Less(t, got, want)
}
