package svdquant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/quant"
	"github.com/deltacome/deltacome/internal/synth"
)

// hErr returns tr(E H Eᵀ) / tr(D H Dᵀ) for E = D - hat, directly.
func hErr(d, hat, h []float32, rows, cols int) float64 {
	var num, den float64
	for r := range rows {
		for i := range cols {
			var ei, di float64
			for j := range cols {
				hij := float64(h[i*cols+j])
				ei += hij * float64(d[r*cols+j]-hat[r*cols+j])
				di += hij * float64(d[r*cols+j])
			}
			num += ei * float64(d[r*cols+i]-hat[r*cols+i])
			den += di * float64(d[r*cols+i])
		}
	}
	return math.Sqrt(num / den)
}

// TestEncodeSymCalibrated checks that the calibrated encode lowers the
// H-weighted output error at the same stored bytes, and that the recorded
// errors are the ones measured on the decoded product.
func TestEncodeSymCalibrated(t *testing.T) {
	for _, tc := range []struct {
		rows, cols, g int
		ratio         float64
	}{
		{96, 160, 0, 16},
		{160, 96, 0, 8},
		{128, 300, 64, 16}, // groups, and a last GPTQ block of 44 columns
	} {
		t.Run(fmt.Sprintf("%dx%d_g%d_r%g", tc.rows, tc.cols, tc.g, tc.ratio), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.rows), 11))
			delta := testDelta(rng, tc.rows, tc.cols, 48)
			h := synth.Gram(rng, tc.cols, 4*tc.cols)
			opt := Options{Ratio: tc.ratio, GroupSize: tc.g, SVD: linalg.RouteExact}
			free, err := EncodeSym(delta, tc.rows, tc.cols, opt)
			require.NoError(t, err)
			opt.Calibration = &Calibration{H: h}
			cal, err := EncodeSym(delta, tc.rows, tc.cols, opt)
			require.NoError(t, err)

			size := func(e *EncodedSym) int { return len(e.UCodes) + len(e.VCodes) + len(e.UScales) + len(e.VScales) }
			assert.Equal(t, size(free), size(cal), "same widths, same bytes")
			assert.Equal(t, free.Record.Bands, cal.Record.Bands)
			freeHat, err := free.Product(tc.rows, tc.cols, &free.Record)
			require.NoError(t, err)
			calHat, err := cal.Product(tc.rows, tc.cols, &cal.Record)
			require.NoError(t, err)
			eFree, eCal := hErr(delta, freeHat, h, tc.rows, tc.cols), hErr(delta, calHat, h, tc.rows, tc.cols)
			t.Logf("H-weighted relative error: data-free %.4f, calibrated %.4f", eFree, eCal)
			assert.Equal(t, CalibKept, cal.Record.Calibration)
			// A gain of at least 5% relative: the heavy columns carry most
			// of H's weight, which the data-free encode ignores (measured
			// here: the error about halves on every shape).
			assert.Less(t, eCal, 0.95*eFree)
			// The recorded errors come from trace identities in float32
			// products; 1e-3 absolute covers their rounding.
			const traceTol = 1e-3
			assert.InDelta(t, eFree, cal.Record.HRelErrorDataFree, traceTol)
			assert.InDelta(t, eCal, cal.Record.HRelError, traceTol)
		})
	}
}

// TestEncodeSymCalibrationUnusable checks that statistics that cannot be
// used (all zero, or of the wrong size) leave the data-free result or are
// refused.
func TestEncodeSymCalibrationUnusable(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const rows, cols = 64, 96
	delta := testDelta(rng, rows, cols, 16)
	free, err := EncodeSym(delta, rows, cols, Options{Ratio: 8, SVD: linalg.RouteExact})
	require.NoError(t, err)
	zero, err := EncodeSym(delta, rows, cols, Options{Ratio: 8, SVD: linalg.RouteExact, Calibration: &Calibration{H: make([]float32, cols*cols)}})
	require.NoError(t, err)
	assert.Equal(t, free.SymFactors, zero.SymFactors)
	assert.Equal(t, CalibUnusable, zero.Record.Calibration)
	_, err = EncodeSym(delta, rows, cols, Options{Ratio: 8, Calibration: &Calibration{H: make([]float32, rows*rows)}})
	assert.Error(t, err)
}

func TestRoundSymMatchesDequantize(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, 200)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for _, bits := range []int{1, 2, 3, 8} {
		codes, scales := make([]uint8, len(x)), make([]uint16, 1)
		quant.QuantizeSym(x, bits, 0, codes, scales)
		deq := make([]float32, len(x))
		quant.DequantizeSym(deq, codes, scales, bits, 0)
		for i, v := range x {
			c, q := quant.RoundSym(v, scales[0], bits)
			require.Equal(t, codes[i], c, "bits %d element %d", bits, i)
			require.Equal(t, deq[i], q)
		}
	}
}
