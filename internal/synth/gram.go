package synth

import (
	"math/rand/v2"

	"github.com/deltacome/deltacome/internal/linalg"
)

// Gram returns H = XᵀX (row-major n x n, float32) for tokens x n synthetic
// inputs X drawn from rng: Gaussian columns, every 16th scaled by 8, plus
// one direction all columns share. Those are the outlier features and
// correlations that make a transformer projection's inputs far from white,
// and calibration statistics (docs/CALIBRATION.md) far from a multiple of
// the identity.
func Gram(rng *rand.Rand, n, tokens int) []float32 {
	shared := make([]float64, n)
	for j := range shared {
		shared[j] = rng.NormFloat64()
	}
	xt := make([]float32, n*tokens) // Xᵀ, one input per row
	for t := range tokens {
		z := rng.NormFloat64()
		for j := range n {
			v := rng.NormFloat64() + z*shared[j]
			if j%16 == 0 {
				v *= 8
			}
			xt[j*tokens+t] = float32(v)
		}
	}
	h := make([]float32, n*n)
	linalg.Gram(h, xt, n, tokens)
	return h
}
