package linalg

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
)

// randomizedGram carries out Randomized's steps 1-3 with a sketch of l
// columns and q power iterations; seed seeds Ω.
func randomizedGram(a []float32, rows, cols, rank, l, q int, seed uint64) (*SVD, error) {
	short, long := min(rows, cols), max(rows, cols)
	wide := rows <= cols
	g := make([]float32, short*short)
	if wide { // X = A, short x long
		blas32Impl.Ssyrk(blas.Upper, blas.NoTrans, short, long, 1, a, cols, 0, g, short)
	} else { // X = Aᵀ: G = AᵀA
		blas32Impl.Ssyrk(blas.Upper, blas.Trans, short, long, 1, a, cols, 0, g, short)
	}
	for i := range short { // mirror the upper triangle for plain products
		for j := range i {
			g[i*short+j] = g[j*short+i]
		}
	}
	y := make([]float32, short*l)
	w := make([]float32, short*l)
	gaussian(w, seed)
	ipiv := make([]int, l)
	for it := 0; it <= q; it++ {
		gemm32(blas.NoTrans, blas.NoTrans, short, l, short, g, short, w, l, y, l)
		luBasis(y, short, l, ipiv)
		if it == q {
			if err := orthonormalize(y, short, l); err != nil {
				return nil, err
			}
		}
		w, y = y, w
	}
	// w holds Q. Rayleigh–Ritz: T = Qᵀ·G·Q, l x l.
	gemm32(blas.NoTrans, blas.NoTrans, short, l, short, g, short, w, l, y, l)
	t := make([]float32, l*l)
	gemm32(blas.Trans, blas.NoTrans, l, l, short, w, l, y, l, t, l)
	w32 := make([]float32, l*rank)
	if !symEigDense32(l, rank, t, w32) {
		return nil, fmt.Errorf("%w: symmetric eigensolver, %d x %d projected Gram matrix", ErrNoConvergence, l, l)
	}
	// Left vectors as rows: Uᵀ = Wᵀ·Qᵀ (rank x short).
	us := make([]float32, rank*short)
	gemm32(blas.Trans, blas.Trans, rank, short, l, w32, rank, w, l, us, short)
	for j := range rank {
		normalize32(us[j*short : (j+1)*short])
	}
	// Right vectors as rows: Vᵀ = Uᵀ·X (rank x long).
	vl := make([]float32, rank*long)
	if wide {
		gemm32(blas.NoTrans, blas.NoTrans, rank, long, short, us, short, a, cols, vl, long)
	} else {
		gemm32(blas.NoTrans, blas.Trans, rank, long, short, us, short, a, cols, vl, long)
	}
	s := make([]float64, rank)
	s0 := 0.0
	for j := range rank {
		s[j] = normalize32(vl[j*long : (j+1)*long])
		s0 = math.Max(s0, s[j])
	}
	if wide {
		return finish32(us, vl, s, rows, cols, randZeroTol(rows, cols, s0)), nil
	}
	return finish32(vl, us, s, rows, cols, randZeroTol(rows, cols, s0)), nil
}

// luBasis replaces the columns of the row-major rows x cols float32 matrix y
// (rows ≥ cols) by P·L from its LU factorisation with partial pivoting
// y = P·L·U: a basis of the same column space with entries at most 1 in
// magnitude and a unit diagonal that keeps the columns apart. Between power
// iterations it stands in for an orthonormalisation at the price of one
// float32 factorisation (as in Szlam, Kluger and Tygert's fbpca, 2014), and
// it conditions the last iterate for the single Cholesky QR pass that
// follows.
func luBasis(y []float32, rows, cols int, ipiv []int) {
	luFactor32(y, rows, cols, ipiv)
	for i := range cols { // keep L: unit diagonal, zeros above
		row := y[i*cols : (i+1)*cols]
		row[i] = 1
		clear(row[i+1:])
	}
	// P·L: undo the interchanges, last first.
	for i := cols - 1; i >= 0; i-- {
		if p := ipiv[i]; p != i {
			a, b := y[i*cols:(i+1)*cols], y[p*cols:(p+1)*cols]
			for j := range a {
				a[j], b[j] = b[j], a[j]
			}
		}
	}
}
