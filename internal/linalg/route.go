package linalg

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/mat"
)

// eps64 is the float64 unit roundoff 2⁻⁵², the relative error of one
// rounding in the float64 arithmetic of both routes.
const eps64 = 0x1p-52

// zeroTol is the threshold at or below which every route reports a singular
// value as zero: sqrt(max(rows, cols)·ε)·s0, the resolution of the Gram route
// (see gram), for a matrix whose largest singular value is s0. Sharing one
// threshold makes the returned rank independent of the route.
func zeroTol(rows, cols int, s0 float64) float64 {
	return math.Sqrt(float64(max(rows, cols))*eps64) * s0
}

// gram computes the truncated SVD through the eigendecomposition of the
// smaller Gram matrix (AᵀA if cols ≤ rows, else AAᵀ).
//
// Accuracy: the eigenvalues λ = s² of the Gram matrix carry an absolute error
// of about max(rows, cols)·ε·s₀², so a singular value s is resolved when
// s ≫ sqrt(max(rows, cols)·ε)·s₀; smaller ones are reported as zero. The
// singular values returned are the norms ‖A v‖ (or ‖Aᵀu‖) of the recovered
// products: Rayleigh quotients of the exact A, whose error is second order in
// the eigenvectors' error, so they are more accurate than sqrt(λ). For the
// spectra of weight deltas both are far below float32 resolution.
func gram(a []float32, rows, cols, rank int) (*SVD, error) {
	if rank == 0 {
		return finish(triplets{}, rows, cols, 0), nil
	}
	// x is A or Aᵀ, whichever is small x big with small = min(rows, cols):
	// its rows are what the Gram matrix pairs up. One float64 copy serves
	// both products below.
	tallA := cols <= rows
	small, big := min(rows, cols), max(rows, cols)
	var x []float64
	if tallA {
		x = transpose64From32(a, rows, cols)
	} else {
		x = make([]float64, len(a))
		for i, v := range a {
			x[i] = float64(v)
		}
	}
	g := make([]float64, small*small)
	syrkUpper64(false, small, big, x, big, 0, g, small) // AᵀA or AAᵀ
	w := make([]float64, rank)
	z := make([]float64, small*rank) // top eigenvectors as columns, largest first
	if !symEigTop(small, rank, g, w, z) {
		return nil, fmt.Errorf("%w: symmetric eigensolver, %d x %d Gram matrix", ErrNoConvergence, small, small)
	}
	// The other factor, one vector per row: row j of Zᵀ·x is (A v_j)ᵀ when
	// Z holds right vectors (x = Aᵀ) and (Aᵀ u_j)ᵀ when it holds left ones.
	p := make([]float64, rank*big)
	gemm64(blas.Trans, blas.NoTrans, rank, big, small, z, rank, x, big, p, big)
	zt := transpose(z, small, rank, rank) // rank x small: one known vector per row
	t := triplets{u: make([][]float64, rank), v: make([][]float64, rank), s: make([]float64, rank)}
	s0 := 0.0
	for j := range rank {
		other := p[j*big : (j+1)*big]
		t.s[j] = normalize(other)
		s0 = math.Max(s0, t.s[j])
		known := zt[j*small : (j+1)*small]
		if tallA {
			t.u[j], t.v[j] = other, known
		} else {
			t.u[j], t.v[j] = known, other
		}
	}
	return finish(t, rows, cols, zeroTol(rows, cols, s0)), nil
}

// transpose64From32 returns the cols x rows float64 transpose of the
// row-major float32 rows x cols matrix a.
func transpose64From32(a []float32, rows, cols int) []float64 {
	out := make([]float64, rows*cols)
	for i0 := 0; i0 < rows; i0 += transposeTile {
		for j0 := 0; j0 < cols; j0 += transposeTile {
			for i := i0; i < min(i0+transposeTile, rows); i++ {
				for j := j0; j < min(j0+transposeTile, cols); j++ {
					out[j*rows+i] = float64(a[i*cols+j])
				}
			}
		}
	}
	return out
}

// bidiag computes the truncated SVD with gonum's mat.SVD (Golub–Kahan
// bidiagonalisation and implicit QR, LAPACK's dgesvd). It is the reference the
// Gram route is tested against; Exact does not use it because it is 1.5-2.3x
// slower up to 1024 x 384 and no faster at 2048² (see Exact).
func bidiag(a []float32, rows, cols, rank int) (*SVD, error) {
	if rank == 0 {
		return finish(triplets{}, rows, cols, 0), nil
	}
	var svd mat.SVD
	if ok := svd.Factorize(toDense(a, rows, cols), mat.SVDThin); !ok {
		return nil, fmt.Errorf("%w: mat.SVD of a %d x %d matrix", ErrNoConvergence, rows, cols)
	}
	var u, v mat.Dense
	svd.UTo(&u)
	svd.VTo(&v)
	vals := svd.Values(nil)
	t := triplets{u: make([][]float64, rank), v: make([][]float64, rank), s: vals[:rank]}
	for j := range rank {
		t.u[j] = mat.Col(nil, j, &u)
		t.v[j] = mat.Col(nil, j, &v)
	}
	// dgesvd resolves singular values to about max(rows, cols)·ε·s₀, finer
	// than the Gram route; the shared threshold keeps the routes' ranks equal.
	return finish(t, rows, cols, zeroTol(rows, cols, vals[0])), nil
}
