package linalg

import (
	"fmt"
	"math"

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
	small := min(rows, cols)
	var x *mat.Dense
	if tallA {
		x = transpose(a, rows, cols)
	} else {
		x = toDense(a, rows, cols)
	}
	g := mat.NewDense(small, small, nil)
	g.Mul(x, x.T()) // AᵀA or AAᵀ; Dgemm reads x.T() as a transposed operand
	// Dgemm leaves g symmetric only to rounding; NewSymDense reads the upper
	// triangle, which is what a symmetric product would have produced.
	var eig mat.EigenSym
	if ok := eig.Factorize(mat.NewSymDense(small, g.RawMatrix().Data), true); !ok {
		return nil, fmt.Errorf("%w: symmetric eigensolver, %d x %d Gram matrix", ErrNoConvergence, small, small)
	}
	var q mat.Dense
	eig.VectorsTo(&q) // columns are eigenvectors, eigenvalues ascending
	// qk holds the top-rank eigenvectors as rows (rank x small), largest first.
	qk := mat.NewDense(rank, small, nil)
	for j := range rank {
		col := small - 1 - j
		for i := range small {
			qk.Set(j, i, q.At(i, col))
		}
	}
	// The other factor, one vector per row: row j of Qkᵀ·x is (A v_j)ᵀ when
	// Q holds right vectors (x = Aᵀ) and (Aᵀ u_j)ᵀ when it holds left ones.
	var p mat.Dense
	p.Mul(qk, x)
	t := triplets{u: make([][]float64, rank), v: make([][]float64, rank), s: make([]float64, rank)}
	s0 := 0.0
	for j := range rank {
		other := p.RawRowView(j)
		t.s[j] = normalize(other)
		s0 = math.Max(s0, t.s[j])
		known := qk.RawRowView(j)
		if tallA {
			t.u[j], t.v[j] = other, known
		} else {
			t.u[j], t.v[j] = known, other
		}
	}
	return finish(t, rows, cols, zeroTol(rows, cols, s0)), nil
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
