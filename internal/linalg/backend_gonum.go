//go:build !openblas

package linalg

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	"gonum.org/v1/gonum/lapack"
	lapackgo "gonum.org/v1/gonum/lapack/gonum"
)

// Backend names the BLAS/LAPACK implementation this build uses, for
// `deltacome version` and benchmark reports. Build with -tags openblas for
// OpenBLAS and LAPACKE (see README).
const Backend = "pure-Go gonum"

// nativeTranspose reports whether the BLAS multiplies a transposed operand as
// fast as a plain one. gonum's pure-Go Sgemm/Dgemm do not: a transposed
// operand runs at about a fifth of the speed (METHOD.md: ~2.7 vs ~13 GFLOP/s),
// so products copy the transpose out first.
const nativeTranspose = false

// autoMinDim is AutoMinDim for this backend: pure-Go gonum's symmetric
// eigensolver takes 12.8 s for the exact route on a 1024 x 1024 delta at
// ratio 16, the randomized route 0.7 s (BenchmarkEncode, 2-core VM).
const autoMinDim = 512

var (
	blas32Impl blas.Float32   = gonum.Implementation{}
	blas64Impl blas.Float64   = gonum.Implementation{}
	lapackImpl lapack.Float64 = lapackgo.Implementation{}
)

// symEigTop computes the top k eigenpairs of the symmetric row-major n x n
// matrix a (upper triangle read, a overwritten): eigenvalues in w[:k]
// descending, eigenvector j in column j of the row-major n x k matrix z. It
// reports false if the eigensolver did not converge. gonum has no partial
// eigensolver: all pairs are computed with Dsyev and the top k kept.
func symEigTop(n, k int, a, w, z []float64) bool {
	all := make([]float64, n)
	work := []float64{0}
	lapackImpl.Dsyev(lapack.EVCompute, blas.Upper, n, a, n, all, work, -1)
	work = make([]float64, int(work[0]))
	if !lapackImpl.Dsyev(lapack.EVCompute, blas.Upper, n, a, n, all, work, len(work)) {
		return false
	}
	// Dsyev returns ascending eigenvalues, eigenvectors in the columns of a.
	for j := range k {
		src := n - 1 - j
		w[j] = all[src]
		for i := range n {
			z[i*k+j] = a[i*n+src]
		}
	}
	return true
}

// symEigDense32 computes the top k eigenvectors of the symmetric row-major
// float32 n x n matrix a (upper triangle read, a overwritten) into the
// columns of the row-major n x k matrix z, largest eigenvalue first. gonum's
// LAPACK is float64 only: this is symEigFloat64. It reports false if the
// eigensolver did not converge.
func symEigDense32(n, k int, a, z []float32) bool { return symEigFloat64(n, k, a, z) }

// symEigTopRows32 leaves the top k eigenvectors of the symmetric row-major
// float32 n x n matrix a (upper triangle read) in its first k rows, largest
// first: symEigDense32, then its n x k result transposed into a.
func symEigTopRows32(n, k int, a []float32) bool {
	z := make([]float32, n*k)
	if !symEigDense32(n, k, a, z) {
		return false
	}
	copy(a, transpose(z, n, k, k))
	return true
}

// Kernel names the kernels of this build's BLAS: gonum's pure-Go ones,
// the same on every CPU of an architecture.
func Kernel() string { return "gonum" }

// PortableKernelEnv returns "": gonum's kernels are the same on every CPU.
func PortableKernelEnv() string { return "" }
