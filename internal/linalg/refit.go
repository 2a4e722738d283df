package linalg

import (
	"fmt"

	"gonum.org/v1/gonum/blas"
)

// MulBT writes a·bᵀ into dst, row-major m x n, for a row-major m x k and b
// row-major n x k (both hold their vectors as rows, as SVD.U and SVD.V do),
// in float32 through the build's BLAS, cut in the fixed tiles of every
// product: the same bits on any number of cores. It panics if a slice
// length does not match its shape.
func MulBT(dst, a, b []float32, m, k, n int) {
	if len(a) != m*k || len(b) != n*k || len(dst) != m*n {
		panic(fmt.Sprintf("linalg: MulBT: %d x %d times (%d x %d)ᵀ needs %d, %d and %d values, got %d, %d and %d", m, k, n, k, m*k, n*k, m*n, len(a), len(b), len(dst)))
	}
	if k == 0 {
		clear(dst)
		return
	}
	gemm32(blas.NoTrans, blas.Trans, m, n, k, a, k, b, k, dst, n)
}

// SolveSPD solves g·x = b for x, overwriting b (row-major n x nrhs) with
// it, for g row-major n x n symmetric positive definite (its upper triangle
// is read and g is overwritten by its Cholesky factor), in float64 on one
// core. It reports false, leaving b unspecified, when g is not numerically
// positive definite.
func SolveSPD(g []float64, n int, b []float64, nrhs int) bool {
	if len(g) != n*n || len(b) != n*nrhs {
		panic(fmt.Sprintf("linalg: SolveSPD: %d x %d system with %d right-hand sides: %d and %d values", n, n, nrhs, len(g), len(b)))
	}
	if n == 0 || nrhs == 0 {
		return true
	}
	if !lapackImpl.Dpotrf(blas.Upper, n, g, n) {
		return false
	}
	// g = Rᵀ·R: solve Rᵀ·y = b, then R·x = y.
	blas64Impl.Dtrsm(blas.Left, blas.Upper, blas.Trans, blas.NonUnit, n, nrhs, 1, g, n, b, nrhs)
	blas64Impl.Dtrsm(blas.Left, blas.Upper, blas.NoTrans, blas.NonUnit, n, nrhs, 1, g, n, b, nrhs)
	return true
}

// Gram writes x·xᵀ into dst, row-major m x m, for x row-major m x k: the
// upper triangle by the build's BLAS in the fixed tiles of every product
// (half the work of MulBT(dst, x, x, m, k, m)), mirrored into the lower.
// It panics if a slice length does not match its shape.
func Gram(dst, x []float32, m, k int) {
	if len(x) != m*k || len(dst) != m*m {
		panic(fmt.Sprintf("linalg: Gram: %d x %d needs %d and %d values, got %d and %d", m, k, m*k, m*m, len(x), len(dst)))
	}
	clear(dst)
	if k == 0 {
		return
	}
	syrkUpper32(false, m, k, x, k, 0, dst, m)
	for i := range m {
		for j := range i {
			dst[i*m+j] = dst[j*m+i]
		}
	}
}

// InvCholUpper overwrites h (row-major n x n symmetric positive definite,
// its upper triangle read) with the upper-triangular R of H⁻¹ = Rᵀ·R, the
// lower triangle zeroed: the factor GPTQ propagates rounding errors with
// (Frantar et al., arXiv 2210.17323, section 3, step 3). In float64 on one
// core. It reports false, leaving h unspecified, when h is not numerically
// positive definite.
func InvCholUpper(h []float64, n int) bool {
	if len(h) != n*n {
		panic(fmt.Sprintf("linalg: InvCholUpper: %d x %d matrix: %d values", n, n, len(h)))
	}
	if n == 0 {
		return true
	}
	if !lapackImpl.Dpotrf(blas.Upper, n, h, n) || !lapackImpl.Dpotri(blas.Upper, n, h, n) {
		return false
	}
	if !lapackImpl.Dpotrf(blas.Upper, n, h, n) {
		return false
	}
	for i := 1; i < n; i++ {
		clear(h[i*n : i*n+i])
	}
	return true
}
