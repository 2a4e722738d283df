package linalg

import (
	"fmt"

	"gonum.org/v1/gonum/blas"
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
	blas32Impl.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// gemm64 is gemm32 for float64 matrices.
func gemm64(tA, tB blas.Transpose, m, n, k int, a []float64, lda int, b []float64, ldb int, c []float64, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if !nativeTranspose {
		if tA == blas.Trans {
			a, lda, tA = transpose(a, k, m, lda), k, blas.NoTrans
		}
		if tB == blas.Trans {
			b, ldb, tB = transpose(b, n, k, ldb), n, blas.NoTrans
		}
	}
	blas64Impl.Dgemm(tA, tB, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
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
