//go:build openblas

package linalg

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/netlib/lapack/lapacke"
)

// ssyevdLwork is ssyevd's workspace length with eigenvectors, 1 + 6n + 2n²
// (LAPACK's ssyevd.f, LWMIN for JOBZ = 'V').
func ssyevdLwork(n int) int { return 1 + 6*n + 2*n*n }

func TestLworkFromQuery32(t *testing.T) {
	// The answer a LAPACK without round-up gives is the length rounded to
	// the nearest float32: short for n = 2895 (the first n past 2²⁴) and
	// n = 4250 (ratio 16 on a 8192 x 28672 delta), enough with the helper
	// for every n up to 20000.
	for _, n := range []int{2895, 4250} {
		assert.Less(t, int(float32(ssyevdLwork(n))), ssyevdLwork(n), "n = %d: the rounding the helper corrects", n)
	}
	for n := 1; n <= 20000; n++ {
		want := ssyevdLwork(n)
		if got := lworkFromQuery32(float32(want)); got < want {
			t.Fatalf("n = %d: %d < %d", n, got, want)
		}
	}
}

// TestSymEigDense32LargeWorkspace reproduces the failure of the randomized
// route at ratio 16 on 8192 x 28672 deltas on the smallest matrix where it
// occurs: the workspace ssyevd needs is not a float32 from n = 2895 on (see
// lworkFromQuery32), so the eigensolver refused every matrix of that size,
// whatever its conditioning. A diagonal matrix keeps the decomposition
// itself cheap.
func TestSymEigDense32LargeWorkspace(t *testing.T) {
	const n, k = 2895, 5
	rng := rand.New(rand.NewPCG(17, 1))
	a := make([]float32, n*n)
	for i := range n {
		a[i*n+i] = float32(rng.Float64())
	}
	a[n/2*n+n/2] = 2 // the largest eigenvalue, eigenvector e_{n/2}
	z := make([]float32, n*k)
	require.True(t, symEigDense32(n, k, a, z), "ssyevd on %d x %d", n, n)
	assert.InDelta(t, 1, abs32(z[n/2*k]), 1e-6, "top eigenvector")
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}

// TestRandomizedLargeRitz runs the randomized route through a 2900 x 2900
// projected Gram matrix, past the size where ssyevd's workspace query
// stopped it (see TestSymEigDense32LargeWorkspace), and holds it to the
// accuracy target of TestRandomizedAccuracy: its truncation residual
// ‖A‖² - Σ s² (U orthonormal, V = AᵀU/s) at most 8% above the exact
// route's.
func TestRandomizedLargeRitz(t *testing.T) {
	if testing.Short() {
		t.Skip("seconds of products")
	}
	// The default depth with a search space of l = 2900 (at the default
	// p = k/2, rank 1930); a smaller rank keeps the exact reference cheap.
	const rows, cols, rank = 2944, 2944, 300
	rng := rand.New(rand.NewPCG(17, 4))
	a := slowSpectrum(rng, rows, cols, rows, 0.3)
	opt := DefaultRandomized()
	opt.Oversample = 2900 - rank
	d, err := Randomized(a, rows, cols, rank, opt)
	require.NoError(t, err)
	assert.Equal(t, RouteRandomized, d.Route)
	assert.Empty(t, d.Fallback)
	exact, err := Exact(a, rows, cols, rank)
	require.NoError(t, err)
	total := 0.0
	for _, v := range a {
		total += float64(v) * float64(v)
	}
	residual := func(d *SVD) float64 {
		r := total
		for _, s := range d.S {
			r -= float64(s) * float64(s)
		}
		return r
	}
	t.Logf("residual %.5f of |A|^2, exact %.5f", residual(d)/total, residual(exact)/total)
	assert.Less(t, residual(d), residual(exact)*1.08)
	assertOrthonormal(t, d.U[:8*rows], rows, 8, "U") // a sample: the identity needs orthonormal U
}

// TestSymEigRowsMatchesLAPACKE checks that the column-major call on the
// mirrored matrix is row-major LAPACKE_ssyevd's computation: the same
// eigenvectors bit for bit, largest first, whatever the lower triangle held.
func TestSymEigRowsMatchesLAPACKE(t *testing.T) {
	const n = 301
	rng := rand.New(rand.NewPCG(5, 9))
	a := make([]float32, n*n)
	for i := range n {
		for j := i; j < n; j++ {
			a[i*n+j] = float32(rng.NormFloat64())
		}
		for j := range i {
			a[i*n+j] = float32(rng.NormFloat64()) * 1e6 // not read
		}
	}
	ref := slices.Clone(a)
	vals := make([]float32, n)
	work, iwork := []float32{0}, []int32{0}
	lapacke.Ssyevd('V', 'U', n, ref, n, vals, work, -1, iwork, -1)
	work, iwork = make([]float32, lworkFromQuery32(work[0])), make([]int32, iwork[0])
	require.True(t, lapacke.Ssyevd('V', 'U', n, ref, n, vals, work, len(work), iwork, len(iwork)))

	require.True(t, symEigRows32(n, a))
	for j := range n {
		for i := range n {
			if a[j*n+i] != ref[i*n+n-1-j] {
				t.Fatalf("eigenvector %d, entry %d: %v, LAPACKE %v", j, i, a[j*n+i], ref[i*n+n-1-j])
			}
		}
	}
}
