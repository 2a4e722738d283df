package linalg

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
)

// randomizedGram carries out Randomized's steps 1-3 with a Krylov space of
// depth blocks of b columns; seed seeds Ω.
func randomizedGram(a []float32, rows, cols, rank, b, depth int, seed uint64) (*SVD, error) {
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
	w, gw, err := krylovBasis(g, short, b, depth, seed)
	if err != nil {
		return nil, err
	}
	// Rayleigh–Ritz: T = Qᵀ·(G·Q), l x l.
	l := b * depth
	t := make([]float32, l*l)
	gemm32(blas.Trans, blas.NoTrans, l, l, short, w, l, gw, l, t, l)
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

// krylovBasis returns an orthonormal basis Q (row-major n x l, one basis
// vector per column, l = b·d) of the block Krylov space
// span{G·Ω, G²·Ω, ..., G^d·Ω} of the symmetric n x n float32 matrix g, for
// a Gaussian n x b test matrix Ω, and G·Q, which the Rayleigh–Ritz step
// needs and the iteration computes anyway. It is block Lanczos with full
// reorthogonalisation: each new block G·Q_j is orthogonalised against
// every block so far by classical Gram–Schmidt applied twice (in float32,
// through the BLAS), then orthonormalised in float64 (orthonormalize). The
// blocks never meet the rounding trouble of raw powers G^j·Ω, whose columns
// all turn towards the top eigenvectors. It costs d+1 products with G of b
// columns each and about 4·n·l² more for the reorthogonalisation.
func krylovBasis(g []float32, n, b, d int, seed uint64) (q, gq []float32, err error) {
	l := b * d
	q, gq = make([]float32, n*l), make([]float32, n*l)
	w, next := make([]float32, n*b), make([]float32, n*b)
	c := make([]float32, l*b)
	gaussian(next, seed)
	gemm32(blas.NoTrans, blas.NoTrans, n, b, n, g, n, next, b, w, b) // G·Ω
	for j := range d {
		if j > 0 { // w -= Q_{1..j}·(Q_{1..j}ᵀ·w), twice
			done := j * b
			for range 2 {
				gemm32ab(blas.Trans, blas.NoTrans, done, b, n, 1, q, l, w, b, 0, c, b)
				gemm32ab(blas.NoTrans, blas.NoTrans, n, b, done, -1, q, l, c, b, 1, w, b)
			}
		}
		if err := orthonormalize(w, n, b); err != nil {
			return nil, nil, err
		}
		setCols(q, l, j*b, w, b)
		gemm32(blas.NoTrans, blas.NoTrans, n, b, n, g, n, w, b, next, b) // G·Q_j: next block, and part of G·Q
		setCols(gq, l, j*b, next, b)
		w, next = next, w
	}
	return q, gq, nil
}

// setCols copies the row-major n x b matrix src into columns c0..c0+b-1 of
// the row-major matrix dst of row length ld.
func setCols(dst []float32, ld, c0 int, src []float32, b int) {
	for i := range len(src) / b {
		copy(dst[i*ld+c0:i*ld+c0+b], src[i*b:(i+1)*b])
	}
}
