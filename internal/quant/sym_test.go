package quant

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// quantizeSym returns the dequantized x and QuantizeSym's error.
func quantizeSym(x []float32, bits, g int) ([]float32, float64) {
	codes, scales := make([]uint8, len(x)), make([]uint16, SymGroups(len(x), g))
	e := QuantizeSym(x, bits, g, codes, scales)
	xh := make([]float32, len(x))
	DequantizeSym(xh, codes, scales, bits, g)
	return xh, e
}

func TestQuantizeSymMatchesDequantize(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, g := range []int{0, 128, 1000} {
		for bits := 1; bits <= MaxBits; bits++ {
			x := gaussian(rng, 4096, 0.02)
			xh, e := quantizeSym(x, bits, g)
			var flat float64
			for i := range x {
				d := float64(x[i]) - float64(xh[i])
				flat += d * d
			}
			assert.InEpsilon(t, flat, e, sumTol(len(x)), "bits %d group %d", bits, g)
		}
	}
}

// TestQuantizeSymGain checks the search against the plain grid that reaches
// max|x| and that more bits never cost error, on a Gaussian vector.
func TestQuantizeSymGain(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	x := gaussian(rng, 4096, 1)
	prev := math.Inf(1)
	for bits := 1; bits <= MaxBits; bits++ {
		_, e := quantizeSym(x, bits, 0)
		var amax float64
		for _, v := range x {
			amax = max(amax, math.Abs(float64(v)))
		}
		plain := symErr(x, bf16Sat(amax/float64(int(1)<<bits-1)), float64(int(1)<<bits-1), math.Inf(1))
		assert.LessOrEqual(t, e, plain, "bits %d", bits)
		assert.Less(t, e, prev, "bits %d", bits)
		prev = e
	}
	// 2 bits on a unit Gaussian: the Lloyd-Max uniform 4-level quantizer's
	// error is 0.1188 per element; the searched grid must come within 5%.
	_, e := quantizeSym(x, 2, 0)
	assert.Less(t, e/float64(len(x)), 0.1188*1.05)
}

func TestQuantizeSymDegenerate(t *testing.T) {
	zero := make([]float32, 100)
	xh, e := quantizeSym(zero, 2, 0)
	assert.Zero(t, e)
	assert.Equal(t, zero, xh)
	huge := []float32{3e38, -3e38, 1}
	xh, _ = quantizeSym(huge, 8, 0)
	for _, v := range xh {
		require.False(t, math.IsInf(float64(v), 0) || math.IsNaN(float64(v)))
	}
	one := []float32{0.5}
	xh, e = quantizeSym(one, 1, 0)
	assert.Equal(t, float32(0.5), xh[0])
	assert.Zero(t, e)
}
