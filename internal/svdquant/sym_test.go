package svdquant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/synth"
)

func TestEncodeSymRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		rows, cols, g, refit int
		svd                  linalg.Route
	}{
		{96, 160, 0, 0, linalg.RouteExact},
		{160, 96, 64, 1, linalg.RouteExact},
		{256, 512, 0, 2, linalg.RouteRandomized},
		{512, 256, 0, 1, linalg.RouteRandomized},
	} {
		t.Run(fmt.Sprintf("%dx%d_g%d_refit%d", tc.rows, tc.cols, tc.g, tc.refit), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.cols)))
			delta := testDelta(rng, tc.rows, tc.cols, 32)
			enc, err := EncodeSym(delta, tc.rows, tc.cols, Options{Ratio: 16, GroupSize: tc.g, SVD: tc.svd, Refit: tc.refit})
			require.NoError(t, err)
			stored := len(enc.UCodes) + len(enc.VCodes) + len(enc.UScales) + len(enc.VScales)
			assert.LessOrEqual(t, int64(stored), Budget(tc.rows, tc.cols, 16))
			var bits []int
			for _, b := range enc.Record.Bands {
				for range b.Count {
					bits = append(bits, b.Bits)
				}
			}
			assert.Equal(t, alloc.CostSym(tc.rows, tc.cols, tc.g, bits), int64(stored), "the allocator counts the stored bytes")
			hat, err := enc.Product(tc.rows, tc.cols, &enc.Record)
			require.NoError(t, err)
			var errSq, normSq float64
			for i, d := range delta {
				e := float64(d - hat[i])
				errSq += e * e
				normSq += float64(d) * float64(d)
			}
			// The recorded error is measured the same way, block by block.
			assert.InDelta(t, math.Sqrt(errSq/normSq), enc.Record.RelError, 1e-6)
			assert.Less(t, enc.Record.RelError, 0.9)
			assert.LessOrEqual(t, enc.Record.RefitRound, tc.refit)
		})
	}
}

// TestEncodeSymBeatsAsym checks the levers on a fine-tune-like delta at
// equal budget: the symmetric grid is no worse than the asymmetric one, and
// a refit round no worse than none.
func TestEncodeSymBeatsAsym(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const rows, cols = 384, 1024
	delta := testDelta(rng, rows, cols, 128)
	opt := Options{Ratio: 16, GroupSize: 128, SVD: linalg.RouteExact}
	asym, err := Encode(delta, rows, cols, opt)
	require.NoError(t, err)
	opt.GroupSize = 0
	sym0, err := EncodeSym(delta, rows, cols, opt)
	require.NoError(t, err)
	opt.Refit = 1
	sym1, err := EncodeSym(delta, rows, cols, opt)
	require.NoError(t, err)
	t.Logf("asym %.4f sym %.4f sym+refit %.4f (round %d)", asym.Record.RelError, sym0.Record.RelError, sym1.Record.RelError, sym1.Record.RefitRound)
	assert.Less(t, sym0.Record.RelError, asym.Record.RelError)
	assert.LessOrEqual(t, sym1.Record.RelError, sym0.Record.RelError+1e-4)
}

// TestEncodeSymWorkersIdentical checks that the bytes do not depend on the
// worker count nor on GOMAXPROCS, with a refit and with calibration.
func TestEncodeSymWorkersIdentical(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const rows, cols = 300, 700
	delta := testDelta(rng, rows, cols, 64)
	for name, opt := range map[string]Options{
		"refit":      {Ratio: 4, SVD: linalg.RouteExact, Refit: 2},
		"calibrated": {Ratio: 8, SVD: linalg.RouteExact, Calibration: &Calibration{H: synth.Gram(rng, cols, 800)}},
	} {
		t.Run(name, func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
			var first *EncodedSym
			for _, w := range []int{1, 2, 3} {
				runtime.GOMAXPROCS(w)
				opt.Workers = w
				enc, err := EncodeSym(delta, rows, cols, opt)
				require.NoError(t, err)
				if first == nil {
					first = enc
					continue
				}
				assert.Equal(t, first.SymFactors, enc.SymFactors, "workers %d", w)
				assert.Equal(t, first.Record, enc.Record, "workers %d", w)
			}
		})
	}
}

func TestSymFactorsRefuseBadBlobs(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	const rows, cols = 64, 96
	enc, err := EncodeSym(testDelta(rng, rows, cols, 16), rows, cols, Options{Ratio: 8, SVD: linalg.RouteExact})
	require.NoError(t, err)
	require.Positive(t, enc.Record.Rank)
	bad := enc.SymFactors
	bad.UScales = bad.UScales[:len(bad.UScales)-2]
	_, err = bad.Product(rows, cols, &enc.Record)
	assert.Error(t, err)
	bad = enc.SymFactors
	bad.VScales = append([]byte{0x80, 0x7f}, bad.VScales[2:]...) // +Inf
	_, err = bad.Product(rows, cols, &enc.Record)
	assert.Error(t, err)
	bad = enc.SymFactors
	bad.VScales = append([]byte{0x7f, 0x7f}, bad.VScales[2:]...) // the largest bf16: 255x overflows
	_, err = bad.Product(rows, cols, &enc.Record)
	if enc.Record.Bands[0].Bits > 1 {
		assert.Error(t, err)
	}
}
