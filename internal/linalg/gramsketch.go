package linalg

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
)

// randomizedGram carries out Randomized's steps 1-3 with a Krylov space of
// depth blocks of b columns, reading the matrix through p; seed seeds Ω.
// Depth 0 takes the whole short side as the basis (fullSpace). It returns
// the result, or instead a non-empty description of the breakdown that
// stopped it (see Randomized), or the error of reading the matrix.
func randomizedGram(p *panels, rank, b, depth int, seed uint64) (*SVD, string, error) {
	rows, cols := p.rows, p.cols
	short, long := min(rows, cols), max(rows, cols)
	wide := rows <= cols
	g, err := gramOf(p) // G = XXᵀ: X = A (short x long) or Aᵀ
	if err != nil {
		return nil, "", err
	}
	p.release()           // the panels are read again for the right vectors only
	mirrorUpper(g, short) // both triangles, for plain products
	if top, ok := gramInRange(g, short); !ok {
		if top == 0 {
			zero, err := allZeroMatrix(p)
			if err != nil {
				return nil, "", err
			}
			if zero {
				return finish32(nil, nil, nil, rows, cols, 0), "", nil
			}
		}
		return nil, fmt.Sprintf("float32 Gram matrix out of range (largest diagonal entry %.3g)", top), nil
	}
	var us []float32 // left vectors of X as rows, rank x short
	var fallback, broke string
	if depth == 0 {
		us, fallback, broke = fullSpace(g, short, rank)
	} else {
		us, fallback, broke = ritz(g, short, rank, b, depth, seed)
	}
	if broke != "" {
		return nil, broke, nil
	}
	for j := range rank {
		if n := normalize32(us[j*short : (j+1)*short]); !(math.Abs(n-1) <= ritzNormTol) {
			return nil, fmt.Sprintf("Krylov basis lost orthogonality (Ritz vector %d has norm %.3g)", j, n), nil
		}
	}
	// Right vectors as rows: Vᵀ = Uᵀ·X (rank x long).
	vl, err := rightOf(p, us, rank)
	if err != nil {
		return nil, "", err
	}
	p.release()
	s := make([]float64, rank)
	s0 := 0.0
	for j := range rank {
		s[j] = normalize32(vl[j*long : (j+1)*long])
		if s[j]-s[j] != 0 {
			return nil, fmt.Sprintf("singular value %d is %v", j, s[j]), nil
		}
		s0 = math.Max(s0, s[j])
	}
	var d *SVD
	if wide {
		d = finish32(us, vl, s, rows, cols, randZeroTol(rows, cols, s0))
	} else {
		d = finish32(vl, us, s, rows, cols, randZeroTol(rows, cols, s0))
	}
	d.Fallback = fallback
	return d, "", nil
}

// ritz returns the rank Ritz vectors of the Krylov space of g (n x n,
// both triangles) as rows, rank x n: an orthonormal basis Q of the space
// (krylovBasis), the top eigenvectors w of QᵀGQ, and Uᵀ = Wᵀ·Qᵀ. fallback
// says when the float32 eigensolver failed and float64 stood in; broke,
// when non-empty, why no vectors came out.
func ritz(g []float32, n, rank, b, depth int, seed uint64) (us []float32, fallback, broke string) {
	w, gw, err := krylovBasis(g, n, b, depth, seed)
	if err != nil {
		return nil, "", fmt.Sprintf("Krylov basis: %v", err)
	}
	// Rayleigh–Ritz: T = Qᵀ·(G·Q), l x l.
	l := b * depth
	t := make([]float32, l*l)
	gemm32(blas.Trans, blas.NoTrans, l, l, n, w, l, gw, l, t, l)
	w32 := make([]float32, l*rank)
	if !ritzEig32(l, rank, t, w32) || !allFinite(w32) {
		fallback = fmt.Sprintf("float32 eigensolver failed on the %d x %d projected Gram matrix; solved in float64", l, l)
		gemm32(blas.Trans, blas.NoTrans, l, l, n, w, l, gw, l, t, l) // t was overwritten
		if !ritzEig64(l, rank, t, w32) || !allFinite(w32) {
			return nil, "", fmt.Sprintf("float32 and float64 eigensolvers failed on the %d x %d projected Gram matrix", l, l)
		}
	}
	// Left vectors as rows: Uᵀ = Wᵀ·Qᵀ (rank x n).
	us = make([]float32, rank*n)
	gemm32(blas.Trans, blas.Trans, rank, n, l, w32, rank, w, l, us, n)
	return us, fallback, ""
}

// fullSpace returns the top rank eigenvectors of g (n x n, upper triangle
// read, overwritten) as rows, rank x n: the Rayleigh–Ritz step with the
// whole space as the basis, which the randomized route takes for a
// streamed matrix when its search space would cover the short side (a
// large rank: ratio 8 on a 70B-class MLP matrix). In float32 it resolves
// singular values down to about sqrt(ε₃₂)·s₀, as the Krylov route does,
// and holds n² floats where the exact route would hold the matrix in
// float64; the vectors are g's first rows, no copy of them is made. broke
// is ritz's (fallback stays empty: a failure hands the matrix to the exact
// route).
func fullSpace(g []float32, n, rank int) (us []float32, fallback, broke string) {
	if !fullEig32(n, rank, g) || !allFinite(g[:rank*n]) {
		return nil, "", fmt.Sprintf("float32 eigensolver failed on the %d x %d Gram matrix", n, n)
	}
	return g[: rank*n : rank*n], "", ""
}

// The eigensolvers of the Rayleigh–Ritz step, in float32 and in float64
// (see symEigDense32 and symEigFloat64); variables so that tests can make
// them fail.
var ritzEig32, ritzEig64 = symEigDense32, symEigFloat64

// fullEig32 leaves the top k eigenvectors of the symmetric n x n matrix a
// (upper triangle read) in its first k rows, largest first (fullSpace).
var fullEig32 = symEigTopRows32

// symEigFloat64 is symEigDense32 computed in float64: symEigTop on a
// float64 copy of a, rounded back to float32. It is the float32
// eigensolver of the pure-Go backend, whose LAPACK is float64 only, and the
// retry of the OpenBLAS one.
func symEigFloat64(n, k int, a, z []float32) bool {
	a64 := make([]float64, len(a))
	for i, v := range a {
		a64[i] = float64(v)
	}
	w, z64 := make([]float64, k), make([]float64, n*k)
	if !symEigTop(n, k, a64, w, z64) {
		return false
	}
	for i, v := range z64 {
		z[i] = float32(v)
	}
	return true
}

// ritzNormTol bounds |‖Q·w‖ - 1| for the Ritz vectors Q·w, w a unit
// eigenvector of QᵀGQ: ‖Q·w‖² - 1 = wᵀ(QᵀQ - I)w, so a larger deviation
// proves the basis Q far from orthonormal in a direction the result uses.
// The Krylov bases of the tests (l up to 2900) give at most 6e-7; 1e-2
// separates float32 rounding from a basis that lost its orthogonality.
const ritzNormTol = 1e-2

// The range of the largest diagonal entry of the float32 Gram matrix (the
// largest squared row norm of X) in which the randomized route works: from
// 2⁻⁶⁰, where the eigenvalues it resolves (down to ε₃₂ times that) stay
// normal float32 numbers, to 2¹⁰⁰, where the sums of products with G of up
// to 2¹⁷ terms stay far below overflow (2¹²⁸). Weight deltas sit near 1.
const (
	minGramDiag = 0x1p-60
	maxGramDiag = 0x1p100
)

// gramInRange returns the largest diagonal entry of the symmetric row-major
// n x n Gram matrix g (+Inf if an entry is not finite), and whether g is fit
// for the randomized route: that entry within [minGramDiag, maxGramDiag].
// A zero G comes from a zero matrix or from one whose squares all underflow.
func gramInRange(g []float32, n int) (top float64, ok bool) {
	if !allFinite(g) {
		return math.Inf(1), false
	}
	for i := range n {
		top = math.Max(top, float64(g[i*n+i]))
	}
	return top, top >= minGramDiag && top <= maxGramDiag
}

// allZero reports whether every entry of x is zero.
func allZero(x []float32) bool {
	for _, v := range x {
		if v != 0 {
			return false
		}
	}
	return true
}

// allFinite reports whether x holds no NaN and no infinity.
func allFinite(x []float32) bool {
	for _, v := range x {
		if v-v != 0 { // NaN - NaN and Inf - Inf are NaN
			return false
		}
	}
	return true
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
