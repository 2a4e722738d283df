package linalg

import (
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"

	"github.com/deltacome/deltacome/internal/par"
)

// RandomizedOptions configures Randomized.
type RandomizedOptions struct {
	// Oversample is p, the dimension of the search space beyond the rank
	// asked for; a negative value means half the rank.
	Oversample int
	// Depth is d, the number of blocks of the Krylov space: the test matrix
	// has (rank + p)/d columns, multiplied by the short-side Gram matrix
	// G = X·Xᵀ up to d times.
	Depth int
	// Seed seeds the Gaussian test matrix (PCG). The same matrix, options
	// and seed give the same result on the same backend.
	Seed uint64
}

// DefaultRandomized returns the options Truncated uses for the randomized
// route: a block Krylov space of 10 blocks spanning 1.5 times the rank, the
// fastest setting measured within the error target. On the synthetic
// Llama-2-7B layer at ratio 16 it adds 0.7% to the aggregate relative error
// of the exact route, in 14% less time than the subspace iteration it
// replaced (two power iterations, p = k/4: 0.35%); p = k would add 0.1% in
// that iteration's time. docs/PERFORMANCE.md has the measured trade-off.
func DefaultRandomized() RandomizedOptions {
	return RandomizedOptions{Oversample: -1, Depth: 10, Seed: 0x5eed}
}

// eps32 is the float32 unit roundoff 2⁻²⁴: the randomized route multiplies in
// float32.
const eps32 = 0x1p-24

// randZeroTol is the threshold at or below which the randomized route reports
// a singular value as zero. Its products run in float32, whose rounding
// leaves spurious singular values of about sqrt(n)·ε₃₂·s₀ for an n-column
// sum; four times that is far below any value worth keeping (weight deltas
// keep values above 1e-3·s₀) and above the noise.
func randZeroTol(rows, cols int, s0 float64) float64 {
	return 4 * math.Sqrt(float64(max(rows, cols))) * eps32 * s0
}

// Randomized computes an approximate truncated SVD of the row-major rows x
// cols matrix a, keeping at most rank triplets, by a randomized block Krylov
// method (Musco and Musco, 2015, "Randomized block Krylov methods for
// stronger and faster approximate singular value decomposition", within the
// sketching framework of Halko, Martinsson and Tropp, 2011, SIAM Review
// 53(2)) on the short-side Gram matrix. Let X be the matrix or its
// transpose, whichever is wide (short x long), l = rank + p and b = l/d:
//
//  1. G = X·Xᵀ (short x short) once, in float32: its products cost
//     2·short²·b against 2·short·long·b for a pass over X, and each squares
//     the spectrum.
//  2. An orthonormal basis Q of span{G·Ω, G²·Ω, ..., G^d·Ω} for a Gaussian
//     short x b test matrix Ω (see krylovBasis): d+1 products with G of b
//     columns each. Subspace iteration, for the same products, keeps only
//     the last block; the Krylov space keeps them all, which bought
//     accuracy or time on every matrix measured (docs/PERFORMANCE.md).
//  3. The top rank eigenvectors w of the l x l matrix QᵀGQ (float32, the
//     precision its products were formed in; Rayleigh–Ritz) give the left
//     vectors U = Q·w; one pass over X gives V = XᵀU, normalised, and the
//     singular values ‖Xᵀu‖, Rayleigh quotients of X itself rather than
//     the square roots of eigenvalues.
//
// The float32 Gram matrix resolves singular values down to about
// sqrt(ε₃₂)·s₀ (2.4e-4·s₀); the energy below that is negligible in the
// Frobenius error of any ratio worth storing. The products run in float32
// through the build's BLAS. When l reaches the short side the search space
// would cover the whole space: Randomized then returns Exact's result.
//
// Values at or below randZeroTol are dropped, so the result may hold fewer
// than rank triplets. Sign convention and layout are those of SVD. Errors are
// those of Exact, and ErrShape for a Depth below 1.
//
// Breakdown: the float32 arithmetic can fail on a valid input, and the route
// checks for it where the checks cost nothing next to the products. A Gram
// matrix that overflows or sits near float32's underflow (see gramInRange),
// a Krylov block that no QR can orthonormalise, non-finite Ritz vectors or
// values, or Ritz vectors whose norms show a basis that lost its
// orthogonality (see ritzNormTol) hand the problem to the exact route in
// float64. A float32 eigensolver failure on the projected Gram matrix is
// retried in float64 first. Either way SVD.Fallback says what happened;
// the choice depends only on the input, so the result stays deterministic.
func Randomized(a []float32, rows, cols, rank int, opt RandomizedOptions) (*SVD, error) {
	if err := checkArgs(a, rows, cols, rank); err != nil {
		return nil, err
	}
	return RandomizedMatrix(&Dense{Data: a, Rows: rows, Cols: cols}, rank, opt)
}

// RandomizedMatrix is Randomized for a Matrix read a panel of rows at a time
// (PanelRows): the Gram matrix and the right vectors are formed panel by
// panel, so that a matrix of more than 64Mi entries is never held whole.
// The results for a Dense matrix and for any other Matrix of the same
// entries are the same bits. Where the search space would cover the short
// side, a matrix read in one panel takes the exact route (Exact's result);
// a larger one the same steps with the whole short side as the basis
// (fullSpace), in float32 and bounded memory, where the exact route would
// hold the matrix in float64. Errors are Randomized's and those of
// m.ReadRows.
func RandomizedMatrix(m Matrix, rank int, opt RandomizedOptions) (*SVD, error) {
	if err := checkMatrix(m, rank); err != nil {
		return nil, err
	}
	if opt.Depth < 1 {
		return nil, fmt.Errorf("%w: Krylov depth %d", ErrShape, opt.Depth)
	}
	rows, cols := m.Dims()
	p := opt.Oversample
	if p < 0 {
		p = (rank + 1) / 2
	}
	d := opt.Depth
	b := (rank + p + d - 1) / d // block width: l = b·d ≥ rank + p
	short := min(rows, cols)
	if rank == 0 || b*d >= short {
		if !Streamed(rows, cols) || rank == 0 {
			a, err := whole(m)
			if err != nil {
				return nil, err
			}
			return gram(a, rows, cols, rank)
		}
		b, d = short, 0 // fullSpace
	}
	r, broke, err := randomizedGram(newPanels(m), rank, b, d, opt.Seed^(uint64(rows)<<32|uint64(cols)))
	if err != nil || broke == "" {
		return r, err
	}
	a, err := whole(m)
	if err != nil {
		return nil, err
	}
	e, err := gram(a, rows, cols, rank)
	if err != nil {
		return nil, fmt.Errorf("randomized route: %s; exact route: %w", broke, err)
	}
	e.Fallback = "randomized route: " + broke + "; exact route used"
	return e, nil
}

// gaussianBlock is the number of entries drawn from one PCG stream when
// filling a test matrix: streams are keyed by block, so the matrix does not
// depend on how blocks are spread over goroutines.
const gaussianBlock = 1 << 16

// gaussian fills x with independent standard normal values from PCG
// streams keyed by seed and block, on GOMAXPROCS goroutines.
func gaussian(x []float32, seed uint64) {
	nBlocks := (len(x) + gaussianBlock - 1) / gaussianBlock
	par.Each(nBlocks, func(b int) {
		rng := rand.New(rand.NewPCG(seed, uint64(b)))
		for i := b * gaussianBlock; i < min((b+1)*gaussianBlock, len(x)); i++ {
			x[i] = float32(rng.NormFloat64())
		}
	})
}

// cholQRDiagRatio is the ratio of the largest to the smallest diagonal entry
// of a Cholesky QR pass's R (a lower bound on the condition number of the
// basis) above which orthonormalize makes a second pass: one pass leaves an
// orthogonality error of about κ²·ε₆₄, below float32 rounding for κ ≤ 10⁴;
// a Krylov block, orthogonalised against the blocks before it, is normally
// far better conditioned.
const cholQRDiagRatio = 1e3

// orthonormalize replaces the columns of the row-major rows x cols float32
// matrix y (rows ≥ cols) by an orthonormal basis of their span, computed in
// float64: Cholesky QR (R from the Cholesky factor of yᵀy, then y·R⁻¹), a
// second pass when R's diagonal shows y ill-conditioned (CholeskyQR2), with
// Householder QR as the fallback when the Gram matrix is not numerically
// positive definite or a column comes out far from unit norm (a
// rank-deficient y).
func orthonormalize(y []float32, rows, cols int) error {
	y64, r := make([]float64, rows*cols), make([]float64, cols*cols)
	for i, v := range y {
		y64[i] = float64(v)
	}
	ok := true
	for pass := range 2 {
		clear(r)
		syrkUpper64(true, cols, rows, y64, cols, 0, r, cols)
		if ok = lapackImpl.Dpotrf(blas.Upper, cols, r, cols); !ok {
			break
		}
		tiles(rows, 1, false, func(i0, i1, _, _ int) { // rows are independent: blocks of rows
			blas64Impl.Dtrsm(blas.Right, blas.Upper, blas.NoTrans, blas.NonUnit, i1-i0, cols, 1, r, cols, y64[i0*cols:], cols)
		})
		if pass == 0 && diagRatio(r, cols) <= cholQRDiagRatio {
			break
		}
	}
	if ok {
		ok = unitColumns(y64, rows, cols)
	}
	if !ok {
		for i, v := range y {
			y64[i] = float64(v)
		}
		if err := householderQ(y64, rows, cols); err != nil {
			return err
		}
	}
	for i, v := range y64 {
		y[i] = float32(v)
	}
	return nil
}

// diagRatio returns max|r_ii| / min|r_ii| of the row-major n x n matrix r
// (+Inf when one is zero).
func diagRatio(r []float64, n int) float64 {
	lo, hi := math.Inf(1), 0.0
	for i := range n {
		d := math.Abs(r[i*n+i])
		lo, hi = math.Min(lo, d), math.Max(hi, d)
	}
	if !(lo > 0) {
		return math.Inf(1)
	}
	return hi / lo
}

// unitColumns reports whether every column of the row-major rows x cols
// matrix y has a norm within 10% of 1: after a Cholesky QR pass this fails
// only when the Gram matrix was numerically singular.
func unitColumns(y []float64, rows, cols int) bool {
	norms := make([]float64, cols)
	for i := range rows {
		for j, v := range y[i*cols : (i+1)*cols] {
			norms[j] += v * v
		}
	}
	for _, n := range norms {
		if !(math.Abs(n-1) < 0.2) { // |‖c‖² - 1| < 0.2 ⇔ ‖c‖ within ~10% of 1; false for NaN
			return false
		}
	}
	return true
}

// householderQ overwrites the row-major rows x cols matrix y (rows ≥ cols)
// with the Q factor of its Householder QR factorisation (LAPACK dgeqrf and
// dorgqr, never the full rows x rows Q).
func householderQ(y []float64, rows, cols int) error {
	tau := make([]float64, cols)
	q1, q2 := []float64{0}, []float64{0} // workspace queries
	lapackImpl.Dgeqrf(rows, cols, y, cols, tau, q1, -1)
	lapackImpl.Dorgqr(rows, cols, cols, y, cols, tau, q2, -1)
	work := make([]float64, max(int(q1[0]), int(q2[0]), 1))
	lapackImpl.Dgeqrf(rows, cols, y, cols, tau, work, len(work))
	lapackImpl.Dorgqr(rows, cols, cols, y, cols, tau, work, len(work))
	for _, v := range y {
		if v-v != 0 {
			return fmt.Errorf("%w: Householder QR of a %d x %d basis block", ErrNoConvergence, rows, cols)
		}
	}
	return nil
}

// normalize32 scales x to unit norm in place (norm accumulated in float64)
// and returns its original norm; a zero vector is left as is.
func normalize32(x []float32) float64 {
	scale := 0.0
	for _, v := range x {
		scale = math.Max(scale, math.Abs(float64(v)))
	}
	if scale == 0 {
		return 0
	}
	sum := 0.0
	for _, v := range x {
		r := float64(v) / scale
		sum += r * r
	}
	norm := scale * math.Sqrt(sum)
	inv := 1 / norm
	for i, v := range x {
		x[i] = float32(float64(v) * inv)
	}
	return norm
}
