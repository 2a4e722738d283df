package linalg

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGramAndSolve checks Gram against MulBT and SolveSPD against the
// system it solves, on shapes that cut into several product tiles.
func TestGramAndSolve(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	const m, k, nrhs = 300, 700, 5
	x := make([]float32, m*k)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	g, want := make([]float32, m*m), make([]float32, m*m)
	Gram(g, x, m, k)
	MulBT(want, x, x, m, k, m)
	for i := range g {
		// float32 sums of k products of unit Gaussians in other orders:
		// within k·2^-24 of each other relative to the largest entry (~k).
		require.InDelta(t, want[i], g[i], float64(k)*float64(k)*0x1p-24, "entry %d", i)
		assert.Equal(t, g[(i%m)*m+i/m], g[i], "symmetric at %d", i)
	}
	a := make([]float64, m*m)
	for i, v := range g {
		a[i] = float64(v)
	}
	b := make([]float64, m*nrhs)
	for i := range b {
		b[i] = rng.NormFloat64()
	}
	x64 := append([]float64(nil), b...)
	require.True(t, SolveSPD(append([]float64(nil), a...), m, x64, nrhs))
	for i := range m {
		for j := range nrhs {
			var s float64
			for l := range m {
				s += a[i*m+l] * x64[l*nrhs+j]
			}
			assert.InDelta(t, b[i*nrhs+j], s, 1e-9*math.Max(1, math.Abs(b[i*nrhs+j]))*float64(m))
		}
	}
	assert.False(t, SolveSPD([]float64{1, 2, 2, 1}, 2, []float64{1, 1}, 1), "indefinite")
}
