package linalg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/gonum/mat"
)

// Tolerances. The factors are rounded to float32 (unit roundoff 2⁻²⁴ ≈ 6e-8)
// and every check below accumulates a few hundred such roundings in float64,
// so errors of order sqrt(n)·6e-8 ≈ 1e-6 are expected; the Gram route's own
// error (≈ n·2⁻⁵²·s₀²/s, see gram) is below 1e-9 for the spectra used here.
const (
	// valueTol bounds |s - s_ref| / s_ref[0] for singular values.
	valueTol = 1e-6
	// orthoTol bounds each entry of UᵀU - I and VᵀV - I.
	orthoTol = 1e-5
	// energyTol bounds the Eckart–Young identity ‖A - A_k‖² = Σ dropped s²
	// relative to ‖A‖²: reconstruction from float32 factors perturbs A_k by
	// about 6e-8·‖A‖ per factor, so squared norms move by ≈ 1e-7·‖A‖².
	energyTol = 1e-6
	// vecTol bounds |u - u_ref| entrywise for well-separated singular values
	// (gap ≥ 5% of s₀ in the test spectra), where vectors are determined up to
	// sign to about ε·s₀/gap plus float32 rounding.
	vecTol = 1e-5
)

// testMatrix returns a row-major rows x cols float32 matrix of exact rank k
// with singular values 10·0.8^j, plus Gaussian noise of standard deviation
// noise per entry.
func testMatrix(rng *rand.Rand, rows, cols, k int, noise float64) []float32 {
	a := make([]float64, rows*cols)
	x := make([]float64, rows)
	y := make([]float64, cols)
	for j := range k {
		for i := range x {
			x[i] = rng.NormFloat64()
		}
		for i := range y {
			y[i] = rng.NormFloat64()
		}
		// Random Gaussian vectors are orthogonal to ~1/sqrt(dim); that is
		// fine, the test only needs a known-shape spectrum, not exact values.
		s := 10 * math.Pow(0.8, float64(j)) / math.Sqrt(float64(rows*cols))
		for r := range rows {
			for c := range cols {
				a[r*cols+c] += s * x[r] * y[c]
			}
		}
	}
	out := make([]float32, len(a))
	for i := range a {
		out[i] = float32(a[i] + noise*rng.NormFloat64())
	}
	return out
}

// reference returns all singular values of a from gonum's mat.SVD in float64.
func reference(t testing.TB, a []float32, rows, cols int) []float64 {
	var svd mat.SVD
	require.True(t, svd.Factorize(toDense(a, rows, cols), mat.SVDNone))
	return svd.Values(nil)
}

// residualSq returns ‖A - U diag(S) Vᵀ‖²_F and ‖A‖²_F in float64.
func residualSq(a []float32, d *SVD) (res, total float64) {
	for r := range d.Rows {
		for c := range d.Cols {
			x := float64(a[r*d.Cols+c])
			approx := 0.0
			for j := range d.Rank {
				approx += float64(d.U[j*d.Rows+r]) * float64(d.S[j]) * float64(d.V[j*d.Cols+c])
			}
			res += (x - approx) * (x - approx)
			total += x * x
		}
	}
	return res, total
}

// routes are the decompositions under test, all held to the same checks.
var routes = []struct {
	name string
	fn   func([]float32, int, int, int) (*SVD, error)
}{
	{"Exact", Exact},
	{"gram", gram},
	{"bidiag", bidiag},
}

var shapes = []struct {
	rows, cols, k, rank int
	noise               float64
}{
	{rows: 40, cols: 40, k: 8, rank: 8, noise: 1e-3},
	{rows: 64, cols: 24, k: 10, rank: 6, noise: 1e-3},
	{rows: 24, cols: 64, k: 10, rank: 6, noise: 1e-3},
	{rows: 96, cols: 48, k: 4, rank: 20, noise: 1e-2},
	{rows: 33, cols: 71, k: 5, rank: 33, noise: 1e-2},
	{rows: 1, cols: 7, k: 1, rank: 1, noise: 0},
	{rows: 7, cols: 1, k: 1, rank: 1, noise: 0},
	{rows: 50, cols: 50, k: 50, rank: 25, noise: 1e-1},
}

func TestDecompositionProperties(t *testing.T) {
	for _, route := range routes {
		for _, sh := range shapes {
			name := fmt.Sprintf("%s/%dx%d_k%d_rank%d", route.name, sh.rows, sh.cols, sh.k, sh.rank)
			t.Run(name, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(sh.rows), uint64(sh.cols*1000+sh.rank)))
				a := testMatrix(rng, sh.rows, sh.cols, sh.k, sh.noise)
				ref := reference(t, a, sh.rows, sh.cols)
				d, err := route.fn(a, sh.rows, sh.cols, sh.rank)
				require.NoError(t, err)
				require.Equal(t, sh.rows, d.Rows)
				require.Equal(t, sh.cols, d.Cols)
				require.Equal(t, sh.rank, d.Rank, "noisy matrices have no numerically zero values")
				require.Len(t, d.S, d.Rank)
				require.Len(t, d.U, d.Rank*d.Rows)
				require.Len(t, d.V, d.Rank*d.Cols)

				for j := range d.Rank {
					assert.InDelta(t, ref[j], float64(d.S[j]), valueTol*ref[0], "s[%d]", j)
					if j > 0 {
						assert.LessOrEqual(t, d.S[j], d.S[j-1], "s must be non-increasing")
					}
					u := d.LeftVec(j)
					assert.Positive(t, u[argMaxAbs32(u)], "sign convention, pair %d", j)
				}
				assertOrthonormal(t, d.U, d.Rows, d.Rank, "U")
				assertOrthonormal(t, d.V, d.Cols, d.Rank, "V")

				// Eckart–Young: the residual of the best rank-k approximation
				// is the energy of the dropped singular values.
				dropped := 0.0
				for _, s := range ref[d.Rank:] {
					dropped += s * s
				}
				res, total := residualSq(a, d)
				assert.InDelta(t, dropped, res, energyTol*total)
			})
		}
	}
}

// assertOrthonormal checks that the k contiguous vectors of length n in f are
// orthonormal.
func assertOrthonormal(t *testing.T, f []float32, n, k int, name string) {
	t.Helper()
	for a := range k {
		for b := a; b < k; b++ {
			dot := 0.0
			for i := range n {
				dot += float64(f[a*n+i]) * float64(f[b*n+i])
			}
			want := 0.0
			if a == b {
				want = 1
			}
			assert.InDelta(t, want, dot, orthoTol, "%s vectors %d·%d", name, a, b)
		}
	}
}

func TestRoutesAgreeOnVectors(t *testing.T) {
	// The test spectrum 10·0.8^j has gaps ≥ 5% of s₀ among the first 8
	// values, so the vectors themselves are well determined and the sign
	// convention must make both routes return the same ones.
	rng := rand.New(rand.NewPCG(7, 7))
	const rows, cols, rank = 80, 60, 8
	a := testMatrix(rng, rows, cols, 8, 1e-4)
	got, err := Exact(a, rows, cols, rank)
	require.NoError(t, err)
	want, err := bidiag(a, rows, cols, rank)
	require.NoError(t, err)
	for i := range got.U {
		assert.InDelta(t, want.U[i], got.U[i], vecTol, "U[%d]", i)
	}
	for i := range got.V {
		assert.InDelta(t, want.V[i], got.V[i], vecTol, "V[%d]", i)
	}
}

func TestDegenerate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	lowRank := testMatrix(rng, 30, 20, 3, 0)
	tests := []struct {
		name       string
		a          []float32
		rows, cols int
		rank       int
		wantRank   int
	}{
		{name: "zero matrix", a: make([]float32, 12*9), rows: 12, cols: 9, rank: 9, wantRank: 0},
		{name: "zero matrix wide", a: make([]float32, 4*9), rows: 4, cols: 9, rank: 2, wantRank: 0},
		{name: "rank 0 requested", a: lowRank, rows: 30, cols: 20, rank: 0, wantRank: 0},
		// Float32 rounding of the entries leaves singular values near
		// 1e-8·s₀, below the shared zero threshold (zeroTol ≈ 3e-7·s₀).
		{name: "exact rank 3 asked for 20", a: lowRank, rows: 30, cols: 20, rank: 20, wantRank: 3},
		{name: "single entry", a: []float32{-2.5}, rows: 1, cols: 1, rank: 1, wantRank: 1},
	}
	for _, route := range routes {
		for _, tc := range tests {
			t.Run(route.name+"/"+tc.name, func(t *testing.T) {
				d, err := route.fn(tc.a, tc.rows, tc.cols, tc.rank)
				require.NoError(t, err)
				assert.Equal(t, tc.wantRank, d.Rank)
				for _, x := range append(append(append([]float32{}, d.U...), d.S...), d.V...) {
					assert.False(t, math.IsNaN(float64(x)) || math.IsInf(float64(x), 0))
				}
				dropped := 0.0
				for _, s := range reference(t, tc.a, tc.rows, tc.cols)[d.Rank:] {
					dropped += s * s
				}
				res, total := residualSq(tc.a, d)
				assert.InDelta(t, dropped, res, energyTol*total+1e-30)
			})
		}
	}
}

func TestSingleEntrySign(t *testing.T) {
	d, err := Exact([]float32{-2.5}, 1, 1, 1)
	require.NoError(t, err)
	assert.Equal(t, []float32{1}, d.U)
	assert.Equal(t, []float32{2.5}, d.S)
	assert.Equal(t, []float32{-1}, d.V)
}

func TestExactErrors(t *testing.T) {
	tests := []struct {
		name       string
		a          []float32
		rows, cols int
		rank       int
		want       error
	}{
		{name: "short slice", a: make([]float32, 5), rows: 2, cols: 3, rank: 1, want: ErrShape},
		{name: "zero rows", a: nil, rows: 0, cols: 3, rank: 0, want: ErrShape},
		{name: "negative cols", a: nil, rows: 2, cols: -1, rank: 0, want: ErrShape},
		{name: "rank above min", a: make([]float32, 6), rows: 2, cols: 3, rank: 3, want: ErrShape},
		{name: "negative rank", a: make([]float32, 6), rows: 2, cols: 3, rank: -1, want: ErrShape},
		{name: "NaN", a: []float32{1, float32(math.NaN()), 0, 0}, rows: 2, cols: 2, rank: 1, want: ErrNotFinite},
		{name: "Inf", a: []float32{1, 0, 0, float32(math.Inf(-1))}, rows: 2, cols: 2, rank: 1, want: ErrNotFinite},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Exact(tc.a, tc.rows, tc.cols, tc.rank)
			assert.ErrorIs(t, err, tc.want)
			assert.Nil(t, d)
		})
	}
}

func TestVecPanics(t *testing.T) {
	d := &SVD{Rows: 2, Cols: 3, Rank: 1, U: make([]float32, 2), S: make([]float32, 1), V: make([]float32, 3)}
	assert.Len(t, d.LeftVec(0), 2)
	assert.Len(t, d.RightVec(0), 3)
	assert.Panics(t, func() { d.LeftVec(1) })
	assert.Panics(t, func() { d.RightVec(-1) })
}

// BenchmarkExact times both routes on projection-like shapes at the rank a
// ratio-16 budget keeps (about a quarter of the smaller dimension).
// mat.SVD at 2048² takes about two minutes on the 2-core dev machine.
func BenchmarkExact(b *testing.B) {
	ladder := []struct {
		rows, cols int
		large      bool
	}{
		{384, 384, false},
		{1024, 384, false},
		{384, 1024, false},
		{2048, 2048, true},
	}
	for _, sh := range ladder {
		rank := min(sh.rows, sh.cols) / 4
		rng := rand.New(rand.NewPCG(1, 2))
		a := testMatrix(rng, sh.rows, sh.cols, rank, 1e-2)
		for _, route := range routes[1:] {
			b.Run(fmt.Sprintf("%s/%dx%d_rank%d", route.name, sh.rows, sh.cols, rank), func(b *testing.B) {
				if sh.large && testing.Short() {
					b.Skip("large shape skipped under -short")
				}
				for b.Loop() {
					if _, err := route.fn(a, sh.rows, sh.cols, rank); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
