package svdquant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/archive"
)

func TestLadderBudgets(t *testing.T) {
	b := LadderBudgets(4096, 4096)
	require.Len(t, b, 57) // 7 octaves of 8 steps, both ends
	assert.Equal(t, Budget(4096, 4096, LadderMaxRatio), b[0])
	assert.Equal(t, Budget(4096, 4096, LadderMinRatio), b[len(b)-1])
	assert.Equal(t, Budget(4096, 4096, 16), b[48])
	for k := 1; k < len(b); k++ {
		assert.Greater(t, b[k], b[k-1])
	}
}

func TestShareBudgets(t *testing.T) {
	b := ShareBudgets(4096, 11008, 16)
	share := Budget(4096, 11008, 16)
	assert.Equal(t, share, b[ShareIndex])
	assert.GreaterOrEqual(t, float64(b[0]), 0.75*float64(share))
	assert.LessOrEqual(t, float64(b[len(b)-1]), 1.5*float64(share))
	for k := 1; k < len(b); k++ {
		assert.Greater(t, b[k], b[k-1])
	}
}

// TestCurvePredictsEncode checks that the error Curve predicts for each
// budget is close to what Encode (asym) or EncodeSym (sym, no refit) with
// that budget measures, and that both fall with the budget.
func TestCurvePredictsEncode(t *testing.T) {
	const rows, cols = 192, 320
	rng := rand.New(rand.NewPCG(3, 5))
	delta := testDelta(rng, rows, cols, 48)
	auto, err := alloc.ParseSchedule("auto")
	require.NoError(t, err)
	budgets := []int64{Budget(rows, cols, 64), Budget(rows, cols, 32), Budget(rows, cols, 16), Budget(rows, cols, 8), Budget(rows, cols, 4)}
	for _, sym := range []bool{false, true} {
		t.Run(fmt.Sprintf("sym=%v", sym), func(t *testing.T) {
			opt := Options{Schedule: auto, GroupSize: 128, SVD: linalg.RouteExact}
			if sym {
				opt.GroupSize = 0
			}
			c, normSq, err := Curve(delta, rows, cols, budgets, opt, sym)
			require.NoError(t, err)
			assert.InDelta(t, sumSq(delta), normSq, 1e-9*normSq)
			for k, b := range budgets {
				o := opt
				o.Ratio, o.MaxBytes = 0, b
				var rec archive.LowRank
				if sym {
					enc, err := EncodeSym(delta, rows, cols, o)
					require.NoError(t, err)
					rec = enc.Record.LowRank
				} else {
					enc, err := Encode(delta, rows, cols, o)
					require.NoError(t, err)
					rec = enc.Record
				}
				got := rec.RelError * rec.RelError * normSq
				t.Logf("budget %d: predicted %.5f measured %.5f (x%.4f), bytes %d", b, math.Sqrt(c.SqErr[k]/normSq), rec.RelError, got/c.SqErr[k], c.Bytes[k])
				assert.LessOrEqual(t, c.Bytes[k], b)
				assert.Equal(t, b, rec.Budget)
				// The prediction adds up the pairs' errors as if they were
				// orthogonal; measured here within 0.06%, allowed 2%.
				assert.InEpsilon(t, c.SqErr[k], got, 0.02)
				if k > 0 {
					assert.Less(t, c.SqErr[k], c.SqErr[k-1])
				}
			}
		})
	}
}

func TestCurveZeroDelta(t *testing.T) {
	auto, err := alloc.ParseSchedule("auto")
	require.NoError(t, err)
	c, normSq, err := Curve(make([]float32, 64*32), 64, 32, LadderBudgets(64, 32), Options{Schedule: auto, GroupSize: 128}, false)
	require.NoError(t, err)
	assert.Zero(t, normSq)
	for k := range c.Bytes {
		assert.Zero(t, c.Bytes[k])
		assert.Zero(t, c.SqErr[k])
	}
}
