package linalg

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSingleThreaded checks that SingleThreaded sets one BLAS thread, that
// nested uses restore the setting once, and that products under it agree
// with multi-threaded ones to float32 rounding, at a size the BLAS splits
// over threads.
func TestSingleThreaded(t *testing.T) {
	const m, k, n = 512, 300, 700
	rng := rand.New(rand.NewPCG(21, 22))
	a, b := make([]float32, k*m), make([]float32, k*n)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	want := make([]float32, m*n)
	MulT(want, a, m, b, m, k, n, false)

	threads := blasThreads()
	restore := SingleThreaded()
	assert.Equal(t, 1, blasThreads())
	inner := SingleThreaded() // nested: the outer restore is the one that counts
	inner()
	assert.Equal(t, 1, blasThreads())
	got := make([]float32, m*n)
	MulT(got, a, m, b, m, k, n, false)
	restore()
	restore() // idempotent
	assert.Equal(t, threads, blasThreads())
	for i := range want {
		require.InDelta(t, want[i], got[i], 1e-4)
	}

	// Accumulating adds the product to what dst holds.
	acc := make([]float32, m*n)
	for i := range acc {
		acc[i] = 1
	}
	MulT(acc, a, m, b, m, k, n, true)
	for i := range acc {
		require.InDelta(t, want[i]+1, acc[i], 1e-4)
	}
}

func TestMulTColumnBlock(t *testing.T) {
	// aᵀ for a block of columns [3, 5) of a 4 x 6 matrix a.
	a := []float32{
		0, 0, 0, 1, 2, 0,
		0, 0, 0, 3, 4, 0,
		0, 0, 0, 5, 6, 0,
		0, 0, 0, 7, 8, 0,
	}
	b := []float32{1, 0, 0, 1, 1, 1, 2, 0} // 4 x 2
	dst := make([]float32, 4)
	MulT(dst, a[3:], 6, b, 2, 4, 2, false)
	// rows of aᵀ block: (1,3,5,7) and (2,4,6,8)
	assert.Equal(t, []float32{1 + 5 + 14, 3 + 5, 2 + 6 + 16, 4 + 6}, dst)
	assert.Panics(t, func() { MulT(dst, a[5:], 6, b, 2, 4, 2, false) }, "a too short for its stride")
}
