package linalg

import (
	"fmt"
	"runtime"

	"gonum.org/v1/gonum/blas"

	"github.com/deltacome/deltacome/internal/par"
)

// gemm32 computes c = op(a)·op(b) for row-major float32 matrices, with op(a)
// m x k and op(b) k x n, through the build's BLAS. On backends without fast
// transposed operands (see nativeTranspose) a transposed operand is copied
// out transposed first.
func gemm32(tA, tB blas.Transpose, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	gemm32ab(tA, tB, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
}

// gemm32ab is gemm32 computing c = alpha·op(a)·op(b) + beta·c.
func gemm32ab(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	gemm(blas32Impl.Sgemm, tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// gemm64 is gemm32 for float64 matrices.
func gemm64(tA, tB blas.Transpose, m, n, k int, a []float64, lda int, b []float64, ldb int, c []float64, ldc int) {
	gemm(blas64Impl.Dgemm, tA, tB, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
}

// gemmFunc is the BLAS's Sgemm or Dgemm.
type gemmFunc[T float32 | float64] func(tA, tB blas.Transpose, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int)

// gemm computes c = alpha·op(a)·op(b) + beta·c with the BLAS product f, one
// output tile at a time (see tiles).
func gemm[T float32 | float64](f gemmFunc[T], tA, tB blas.Transpose, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if !nativeTranspose {
		if tA == blas.Trans { // a is stored k x m
			a, lda, tA = transpose(a, k, m, lda), k, blas.NoTrans
		}
		if tB == blas.Trans { // b is stored n x k
			b, ldb, tB = transpose(b, n, k, ldb), n, blas.NoTrans
		}
	}
	tiles(m, n, false, func(i0, i1, j0, j1 int) {
		ai, bj := a[i0:], b[j0:] // columns i0.. of a stored k x m, j0.. of b stored k x n
		if tA == blas.NoTrans {
			ai = a[i0*lda:]
		}
		if tB == blas.Trans {
			bj = b[j0*ldb:]
		}
		f(tA, tB, i1-i0, j1-j0, k, alpha, ai, lda, bj, ldb, beta, c[i0*ldc+j0:], ldc)
	})
}

// syrkUpper32 computes the upper triangle of the symmetric n x n Gram
// matrix g = x·xᵀ + beta·g (trans false; x row-major n x k) or
// xᵀ·x + beta·g (trans true; x row-major k x n), one tile of g at a time
// (see tiles): diagonal tiles by Ssyrk, the others by Sgemm. The lower
// triangle of g is left as it was.
func syrkUpper32(trans bool, n, k int, x []float32, ldx int, beta float32, g []float32, ldg int) {
	syrkUpper(blas32Impl.Ssyrk, blas32Impl.Sgemm, trans, n, k, x, ldx, beta, g, ldg)
}

// syrkUpper64 is syrkUpper32 for float64 matrices.
func syrkUpper64(trans bool, n, k int, x []float64, ldx int, beta float64, g []float64, ldg int) {
	syrkUpper(blas64Impl.Dsyrk, blas64Impl.Dgemm, trans, n, k, x, ldx, beta, g, ldg)
}

// syrkFunc is the BLAS's Ssyrk or Dsyrk.
type syrkFunc[T float32 | float64] func(ul blas.Uplo, t blas.Transpose, n, k int, alpha T, a []T, lda int, beta T, c []T, ldc int)

func syrkUpper[T float32 | float64](syrk syrkFunc[T], f gemmFunc[T], trans bool, n, k int, x []T, ldx int, beta T, g []T, ldg int) {
	if !nativeTranspose { // one Gram product by the BLAS: its tiles would transpose x
		t := blas.NoTrans
		if trans {
			t = blas.Trans
		}
		syrk(blas.Upper, t, n, k, 1, x, ldx, beta, g, ldg)
		return
	}
	tiles(n, n, true, func(i0, i1, j0, j1 int) {
		xi, xj := x[i0:], x[j0:] // columns i0.. and j0.. of x
		tA, tB := blas.Trans, blas.NoTrans
		if !trans { // rows i0.. and j0.. of x
			xi, xj = x[i0*ldx:], x[j0*ldx:]
			tA, tB = blas.NoTrans, blas.Trans
		}
		gij := g[i0*ldg+j0:]
		if i0 == j0 {
			syrk(blas.Upper, tA, i1-i0, k, 1, xi, ldx, beta, gij, ldg)
			return
		}
		f(tA, tB, i1-i0, j1-j0, k, 1, xi, ldx, xj, ldx, beta, gij, ldg)
	})
}

// productTile is the side of the square tiles into which products cut
// their output. Each tile is one call to the BLAS, run on one thread (see
// Backend), and the tiles run on GOMAXPROCS goroutines. The cut depends on
// the shapes only, so every entry of a product is summed in the same order
// on any number of cores: results are the same bits on 1 core or 64.
const productTile = 256

// tileSlots bounds the BLAS calls in flight, across all products: products
// made inside parallel loops (svdquant's blocks) would otherwise run
// GOMAXPROCS² single-threaded calls at once.
var tileSlots = make(chan struct{}, runtime.GOMAXPROCS(0))

// tiles calls fn(i0, i1, j0, j1) for each productTile-sided tile
// [i0, i1) x [j0, j1) of an m x n output, upper (j0 ≥ i0) tiles only when
// upper is set, on up to GOMAXPROCS goroutines.
func tiles(m, n int, upper bool, fn func(i0, i1, j0, j1 int)) {
	tm, tn := (m+productTile-1)/productTile, (n+productTile-1)/productTile
	type tile struct{ i, j int }
	list := make([]tile, 0, tm*tn)
	for i := range tm {
		for j := range tn {
			if !upper || j >= i {
				list = append(list, tile{i, j})
			}
		}
	}
	run := func(t tile) {
		tileSlots <- struct{}{}
		defer func() { <-tileSlots }()
		i0, j0 := t.i*productTile, t.j*productTile
		fn(i0, min(i0+productTile, m), j0, min(j0+productTile, n))
	}
	if len(list) == 1 {
		run(list[0])
		return
	}
	par.Each(len(list), func(i int) { run(list[i]) })
}

// transposeTile is the cache block of the explicit transposes: 64 x 64
// float32 tiles keep both the read and the strided write side in L1/L2.
const transposeTile = 64

// transpose returns the cols x rows transpose of the row-major rows x cols
// matrix a (row stride lda) as a new contiguous matrix.
func transpose[T float32 | float64](a []T, rows, cols, lda int) []T {
	out := make([]T, rows*cols)
	for i0 := 0; i0 < rows; i0 += transposeTile {
		for j0 := 0; j0 < cols; j0 += transposeTile {
			for i := i0; i < min(i0+transposeTile, rows); i++ {
				row := a[i*lda : i*lda+cols]
				for j := j0; j < min(j0+transposeTile, cols); j++ {
					out[j*rows+i] = row[j]
				}
			}
		}
	}
	return out
}

// Mul writes the row-major m x n product a·b into dst, for a row-major m x k
// and b row-major k x n, in float32 through the build's BLAS (see Backend).
// dst is overwritten, not accumulated into. It panics if a slice length does
// not match its shape.
func Mul(dst, a, b []float32, m, k, n int) {
	if len(a) != m*k || len(b) != k*n || len(dst) != m*n {
		panic(fmt.Sprintf("linalg: Mul: %d x %d times %d x %d needs %d, %d and %d values, got %d, %d and %d", m, k, k, n, m*k, k*n, m*n, len(a), len(b), len(dst)))
	}
	if k == 0 {
		clear(dst)
		return
	}
	gemm32(blas.NoTrans, blas.NoTrans, m, n, k, a, k, b, n, dst, n)
}

// MulT writes aᵀ·b into dst, or adds it to dst when acc is true, for dst
// row-major m x n, a stored row-major k x m with row stride lda (a block of
// columns of a wider matrix) and b row-major k x n, in float32 through the
// build's BLAS. It panics if a slice is too short for its shape.
func MulT(dst, a []float32, lda int, b []float32, m, k, n int, acc bool) {
	if len(dst) != m*n || len(b) != k*n || lda < m || (k > 0 && len(a) < (k-1)*lda+m) {
		panic(fmt.Sprintf("linalg: MulT: (%d x %d, stride %d)ᵀ times %d x %d: %d, %d and %d values", k, m, lda, k, n, len(a), len(b), len(dst)))
	}
	beta := float32(0)
	if acc {
		beta = 1
	}
	if k == 0 {
		if !acc {
			clear(dst)
		}
		return
	}
	gemm32ab(blas.Trans, blas.NoTrans, m, n, k, 1, a, lda, b, n, beta, dst, n)
}

// mirrorUpper copies the upper triangle of the row-major n x n matrix a into
// its lower triangle, tile by tile, so that a holds the whole symmetric
// matrix.
func mirrorUpper[T float32 | float64](a []T, n int) {
	for i0 := 0; i0 < n; i0 += transposeTile {
		for j0 := 0; j0 <= i0; j0 += transposeTile {
			for i := i0; i < min(i0+transposeTile, n); i++ {
				row := a[i*n : i*n+i]
				for j := j0; j < min(j0+transposeTile, i); j++ {
					row[j] = a[j*n+i]
				}
			}
		}
	}
}

// reverseRows reverses the order of the rows of the row-major n x n matrix a
// in place.
func reverseRows[T float32 | float64](a []T, n int) {
	tmp := make([]T, n)
	for i := range n / 2 {
		top, bottom := a[i*n:(i+1)*n], a[(n-1-i)*n:(n-i)*n]
		copy(tmp, top)
		copy(top, bottom)
		copy(bottom, tmp)
	}
}
