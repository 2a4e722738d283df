package linalg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/gonum/blas"
)

// slowSpectrum returns a rows x cols matrix with singular values decaying as
// (1 + j/8)^-0.5 over its first k directions plus Gaussian noise of total
// energy noiseShare of the whole: the shape of a fine-tuning delta.
func slowSpectrum(rng *rand.Rand, rows, cols, k int, noiseShare float64) []float32 {
	x := make([]float32, rows*k)
	y := make([]float32, k*cols)
	var sig float64
	for j := range k {
		d := math.Pow(1+float64(j)/8, -0.5)
		sig += d * d
		for i := range rows {
			x[i*k+j] = float32(d * rng.NormFloat64() / math.Sqrt(float64(rows)))
		}
	}
	for i := range y {
		y[i] = float32(rng.NormFloat64() / math.Sqrt(float64(cols)))
	}
	out := make([]float32, rows*cols)
	Mul(out, x, y, rows, k, cols)
	a, b := math.Sqrt((1-noiseShare)/sig), math.Sqrt(noiseShare/float64(rows*cols))
	for i := range out {
		out[i] = float32(a*float64(out[i]) + b*rng.NormFloat64())
	}
	return out
}

func TestRandomizedAccuracy(t *testing.T) {
	// Randomized SVD loses against the optimal truncation what its search
	// space misses. This spectrum is flat past the rank asked for
	// (structure to direction 120, then noise), the hard case for the
	// truncation residual: measured 4.0-4.3% above optimal with the default
	// (depth 10, p = k/2), 0.1-0.3% with p = k, about 11% for the plain sketch of G
	// (depth 1). Each slack leaves room above its measurement; topTol bounds
	// the error of the 10 largest values relative to s₀.
	for _, tc := range []struct {
		rows, cols, rank, depth, p int
		slack, topTol              float64
	}{
		{300, 500, 60, 10, -1, 1.08, 1e-3},
		{500, 300, 60, 10, -1, 1.08, 1e-3},
		{300, 500, 60, 10, 60, 1.01, 1e-3},
		{400, 400, 80, 1, -1, 1.3, 0.1},
	} {
		t.Run(fmt.Sprintf("%dx%d_rank%d_depth%d_p%d", tc.rows, tc.cols, tc.rank, tc.depth, tc.p), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.depth)))
			a := slowSpectrum(rng, tc.rows, tc.cols, 120, 0.2)
			opt := DefaultRandomized()
			opt.Depth, opt.Oversample = tc.depth, tc.p
			d, err := Randomized(a, tc.rows, tc.cols, tc.rank, opt)
			require.NoError(t, err)
			require.Equal(t, tc.rank, d.Rank)
			ref := reference(t, a, tc.rows, tc.cols)
			optimal := 0.0
			for _, s := range ref[tc.rank:] {
				optimal += s * s
			}
			res, total := residualSq(a, d)
			t.Logf("residual %.5f of |A|^2, optimal %.5f", res/total, optimal/total)
			assert.Less(t, res, optimal*tc.slack)
			assert.GreaterOrEqual(t, res, optimal*(1-1e-5), "no rank-k approximation beats the truncated SVD")
			assertOrthonormal(t, d.U, d.Rows, d.Rank, "U")
			assertOrthonormal(t, d.V, d.Cols, d.Rank, "V")
			for j := range d.Rank {
				if j > 0 {
					assert.LessOrEqual(t, d.S[j], d.S[j-1])
				}
				if j < 10 {
					assert.InDelta(t, ref[j], float64(d.S[j]), tc.topTol*ref[0], "s[%d]", j)
				}
				u := d.LeftVec(j)
				assert.Positive(t, u[argMaxAbs32(u)], "sign convention, pair %d", j)
			}
		})
	}
}

func TestRandomizedDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	a := slowSpectrum(rng, 200, 330, 50, 0.2)
	d1, err := Randomized(a, 200, 330, 40, DefaultRandomized())
	require.NoError(t, err)
	d2, err := Randomized(a, 200, 330, 40, DefaultRandomized())
	require.NoError(t, err)
	assert.Equal(t, d1, d2)
}

func TestRandomizedDegenerate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	lowRank := testMatrix(rng, 200, 150, 3, 0)
	for _, tc := range []struct {
		name     string
		a        []float32
		rows     int
		cols     int
		rank     int
		wantRank int
	}{
		{"zero matrix", make([]float32, 200*150), 200, 150, 20, 0},
		{"exact rank 3 asked for 20", lowRank, 200, 150, 20, 3},
		{"search space covers the short side: exact route", lowRank, 200, 150, 140, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Randomized(tc.a, tc.rows, tc.cols, tc.rank, DefaultRandomized())
			require.NoError(t, err)
			assert.Equal(t, tc.wantRank, d.Rank)
			res, total := residualSq(tc.a, d)
			assert.InDelta(t, 0, res, 1e-9*total+1e-30)
		})
	}
}

func TestRandomizedErrors(t *testing.T) {
	_, err := Randomized(make([]float32, 6), 2, 3, 1, RandomizedOptions{Depth: 0})
	assert.ErrorIs(t, err, ErrShape)
	_, err = Randomized([]float32{float32(math.NaN()), 0, 0, 0}, 2, 2, 1, DefaultRandomized())
	assert.ErrorIs(t, err, ErrNotFinite)
}

func TestRoute(t *testing.T) {
	for _, m := range []Route{RouteAuto, RouteExact, RouteRandomized} {
		got, err := ParseRoute(m.String())
		require.NoError(t, err)
		assert.Equal(t, m, got)
	}
	_, err := ParseRoute("fast")
	assert.ErrorIs(t, err, ErrBadRoute)
	assert.Equal(t, RouteExact, RouteAuto.Resolve(AutoMinDim-1, 1<<14))
	assert.Equal(t, RouteRandomized, RouteAuto.Resolve(AutoMinDim, AutoMinDim))
	assert.Equal(t, RouteExact, RouteExact.Resolve(1<<14, 1<<14))
}

func TestMulMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	const m, k, n = 7, 5, 9
	a, b := make([]float32, m*k), make([]float32, k*n)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	got := make([]float32, m*n)
	Mul(got, a, b, m, k, n)
	acc := make([]float32, m*n)
	for i := range acc {
		acc[i] = 1
	}
	MulT(acc, transpose(a, m, k, k), m, b, m, k, n, true)
	for i := range m {
		for j := range n {
			want := 0.0
			for l := range k {
				want += float64(a[i*k+l]) * float64(b[l*n+j])
			}
			assert.InDelta(t, want, got[i*n+j], 1e-5)
			assert.InDelta(t, want+1, acc[i*n+j], 1e-5)
		}
	}
	// Transposed operands through gemm32 agree with explicit transposes.
	at := transpose(a, m, k, k) // k x m
	viaT := make([]float32, m*n)
	gemm32(blas.Trans, blas.NoTrans, m, n, k, at, m, b, n, viaT, n)
	assert.InDeltaSlice(t, got, viaT, 1e-5)
	assert.Panics(t, func() { Mul(got, a, b, m, k+1, n) })
}

func TestGEMMRate(t *testing.T) {
	rate, best := GEMMRate(64, 2)
	assert.Positive(t, rate)
	assert.Positive(t, best)
	assert.Equal(t, 2*64.0*64*64, ProductFLOPs(64, 64, 64))
	assert.Greater(t, RandomizedFLOPs(64, 128, 16), 4*ProductFLOPs(64, 128, 16))
}

// scaled returns a copy of a times 2^e, exact in float32 for these
// magnitudes.
func scaled(a []float32, e int) []float32 {
	out := make([]float32, len(a))
	f := float32(math.Ldexp(1, e))
	for i, v := range a {
		out[i] = v * f
	}
	return out
}

// TestRandomizedBreakdown forces each breakdown the randomized route checks
// for and asserts that the result comes from the route it falls back to and
// says so. Before these checks the 2⁷⁰-scaled matrix, whose float32 Gram
// matrix overflows, ended in ErrNoConvergence (Householder QR of a NaN
// basis block); the 2⁻⁸⁰-scaled one, whose Gram matrix underflows to zero,
// gave factors of residual 197% of ‖A‖² (exact route: 23%); an
// eigensolver failure was an error.
func TestRandomizedBreakdown(t *testing.T) {
	const rows, cols, rank = 300, 500, 60
	rng := rand.New(rand.NewPCG(17, 2))
	a := slowSpectrum(rng, rows, cols, 120, 0.2)
	fail := func(int, int, []float32, []float32) bool { return false }
	unnormalised := func(n, k int, a, z []float32) bool { // eigenvectors of norm 2
		ok := symEigDense32(n, k, a, z)
		for i := range z {
			z[i] *= 2
		}
		return ok
	}
	for _, tc := range []struct {
		name       string
		scale      int // the input is a times 2^scale
		eig32      func(int, int, []float32, []float32) bool
		eig64      func(int, int, []float32, []float32) bool
		wantRoute  Route
		wantReason string
	}{
		{"Gram matrix overflows", 70, symEigDense32, symEigFloat64, RouteExact, "out of range"},
		{"Gram matrix underflows", -80, symEigDense32, symEigFloat64, RouteExact, "out of range"},
		{"float32 eigensolver fails", 0, fail, symEigFloat64, RouteRandomized, "solved in float64"},
		{"both eigensolvers fail", 0, fail, fail, RouteExact, "float32 and float64 eigensolvers failed"},
		{"Ritz vectors not unit", 0, unnormalised, symEigFloat64, RouteExact, "lost orthogonality"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ritzEig32, ritzEig64 = tc.eig32, tc.eig64
			t.Cleanup(func() { ritzEig32, ritzEig64 = symEigDense32, symEigFloat64 })
			in := scaled(a, tc.scale)
			d, err := Randomized(in, rows, cols, rank, DefaultRandomized())
			require.NoError(t, err)
			assert.Equal(t, tc.wantRoute, d.Route)
			assert.Contains(t, d.Fallback, tc.wantReason)
			t.Log(d.Fallback)
			again, err := Randomized(in, rows, cols, rank, DefaultRandomized())
			require.NoError(t, err)
			assert.Equal(t, d, again, "the fallback is deterministic")
			if tc.wantRoute == RouteExact {
				exact, err := Exact(in, rows, cols, rank)
				require.NoError(t, err)
				assert.Equal(t, exact.S, d.S)
				assert.Equal(t, exact.U, d.U)
				return
			}
			// Same target as TestRandomizedAccuracy's default row.
			ref := reference(t, a, rows, cols)
			optimal := 0.0
			for _, s := range ref[rank:] {
				optimal += s * s
			}
			res, _ := residualSq(a, d)
			assert.Less(t, res, optimal*1.08)
		})
	}
}

func TestRandomizedReportsRoute(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 3))
	a := slowSpectrum(rng, 200, 330, 50, 0.2)
	for _, tc := range []struct {
		rank int
		want Route
	}{
		{40, RouteRandomized},
		{150, RouteExact}, // the search space would span the short side
	} {
		d, err := Randomized(a, 200, 330, tc.rank, DefaultRandomized())
		require.NoError(t, err)
		assert.Equal(t, tc.want, d.Route, "rank %d", tc.rank)
		assert.Empty(t, d.Fallback, "rank %d", tc.rank)
	}
}
