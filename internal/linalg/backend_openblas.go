//go:build openblas

package linalg

/*
#cgo LDFLAGS: -lopenblas -llapacke
void openblas_set_num_threads(int);
char* openblas_get_corename(void);
int LAPACKE_ssyevd_work(int layout, char jobz, char uplo, int n, float* a, int lda,
	float* w, float* work, int lwork, int* iwork, int liwork);
*/
import "C"

import (
	"math"
	"os"

	"golang.org/x/sys/cpu"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/lapack"
	"gonum.org/v1/netlib/blas/netlib"
	"gonum.org/v1/netlib/lapack/lapacke"
	lapacknetlib "gonum.org/v1/netlib/lapack/netlib"
)

// Backend names the BLAS/LAPACK implementation this build uses, for
// `deltacome version` and benchmark reports.
//
// OpenBLAS runs every call on the calling thread: products are cut into
// tiles that run on goroutines (see tiles), whose sums do not depend on the
// core count as OpenBLAS's own threading does, and LAPACK runs on one core.
const Backend = "OpenBLAS + LAPACKE (cgo)"

func init() { C.openblas_set_num_threads(1) }

// Kernel names the kernels the BLAS picked for this CPU ("OpenBLAS
// Haswell"): OpenBLAS chooses them when the process starts, from
// OPENBLAS_CORETYPE or else the CPU's features, and kernels for other
// instruction sets round the same sums differently.
func Kernel() string { return "OpenBLAS " + C.GoString(C.openblas_get_corename()) }

// portableKernel is the OpenBLAS kernel set that PortableKernelEnv asks
// for: Haswell's (AVX2 and FMA), which every x86-64 CPU since 2013-2015
// runs, Intel and AMD alike. On AVX-512 CPUs it is within a few percent of
// the SkylakeX kernels (docs/PERFORMANCE.md), and on virtual machines that
// hide the CPU's model it replaces the SSE3 kernels OpenBLAS falls back to.
const portableKernel = "Haswell"

// PortableKernelEnv returns the environment entry ("OPENBLAS_CORETYPE=
// Haswell") under which a new process's OpenBLAS runs the same kernels on
// every x86-64 CPU with AVX2 and FMA, so that archives made on a laptop and
// on a server are the same bytes; or "" when OPENBLAS_CORETYPE is already
// set (the user's choice stands) or the CPU lacks those instructions. The
// kernels are chosen when the library loads: the command re-executes itself
// with the entry (cmd/deltacome).
func PortableKernelEnv() string {
	if _, set := os.LookupEnv("OPENBLAS_CORETYPE"); set || !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return ""
	}
	return "OPENBLAS_CORETYPE=" + portableKernel
}

// nativeTranspose reports whether the BLAS multiplies a transposed operand as
// fast as a plain one, which OpenBLAS does.
const nativeTranspose = true

// autoMinDim is AutoMinDim for this backend: with dsyevr the exact route
// takes well under a second up to 1024 x 4096.
const autoMinDim = 1536

var (
	blas32Impl blas.Float32   = netlib.Implementation{}
	blas64Impl blas.Float64   = netlib.Implementation{}
	lapackImpl lapack.Float64 = lapacknetlib.Implementation{}
)

// symEigTop computes the top k eigenpairs of the symmetric row-major n x n
// matrix a (upper triangle read, a overwritten): eigenvalues in w[:k]
// descending, eigenvector j in column j of the row-major n x k matrix z. It
// reports false if the eigensolver did not converge.
//
// LAPACK's dsyevr (tridiagonal reduction, then MRRR for the requested pairs
// only) computes the top 2/3 of the pairs of a 1988 x 1988 matrix about 5
// times faster than dsyevd computes all of them on the 2-core dev VM.
func symEigTop(n, k int, a, w, z []float64) bool {
	if k == 0 {
		return true
	}
	found := []int32{0}
	isuppz := make([]int32, 2*k)
	vals := make([]float64, n)
	vecs := make([]float64, n*k)
	work, iwork := []float64{0}, []int32{0}
	// LAPACK numbers eigenvalues ascending from 1: the top k are n-k+1..n.
	lapacke.Dsyevr('V', 'I', 'U', n, a, n, 0, 0, n-k+1, n, 0, found, vals, vecs, k, isuppz, work, -1, iwork, -1)
	work, iwork = make([]float64, int(work[0])), make([]int32, iwork[0])
	if !lapacke.Dsyevr('V', 'I', 'U', n, a, n, 0, 0, n-k+1, n, 0, found, vals, vecs, k, isuppz, work, len(work), iwork, len(iwork)) || int(found[0]) != k {
		return false
	}
	// dsyevr returns them ascending: reverse into descending order.
	for j := range k {
		src := k - 1 - j
		w[j] = vals[src]
		for i := range n {
			z[i*k+j] = vecs[i*k+src]
		}
	}
	return true
}

// symEigDense32 computes the top k eigenvectors of the symmetric row-major
// float32 n x n matrix a (upper triangle read, a overwritten) into the
// columns of the row-major n x k matrix z, largest eigenvalue first, for a
// matrix whose top k pairs are most of its pairs, as the randomized route's
// projected Gram matrix is (k = 80% of n). LAPACK's ssyevd computes all pairs
// by divide and conquer, in float32 like the products that formed a. There
// dsyevr's MRRR stalls on the clustered small eigenvalues: for the
// 1658 x 1658 matrix of a 4096 x 11008 delta at ratio 16 (2-core dev VM),
// dsyevr took 1.9 s, dsyevd 0.63 s and ssyevd 0.36 s. It reports false if
// the eigensolver did not converge.
func symEigDense32(n, k int, a, z []float32) bool {
	if k == 0 {
		return true
	}
	if !symEigRows32(n, a) {
		return false
	}
	for j := range k {
		row := a[j*n : (j+1)*n]
		for i, x := range row {
			z[i*k+j] = x
		}
	}
	return true
}

// symEigTopRows32 leaves the top k eigenvectors of the symmetric row-major
// float32 n x n matrix a (upper triangle read) in its first k rows, largest
// first: symEigRows32, which computes them all in place.
func symEigTopRows32(n, _ int, a []float32) bool { return symEigRows32(n, a) }

// symEigRows32 computes all eigenvectors of the symmetric row-major float32
// n x n matrix a (upper triangle read) in place: row j of a becomes the
// eigenvector of the j-th largest eigenvalue. It calls ssyevd in column-major
// layout on a with its upper triangle mirrored into the lower one, which is
// the upper triangle column-major ssyevd reads: the same values and the same
// computation as row-major LAPACKE_ssyevd, without the n x n transposed copy
// that LAPACKE allocates in C memory on each side of the call (256 MiB for
// the 8192 x 8192 Gram matrix of a 70B-class MLP matrix at ratio 8, outside
// the Go runtime's memory limit). Column-major eigenvectors are rows of the
// row-major view, ascending; the rows are then reversed in place. It reports
// false if the eigensolver did not converge.
func symEigRows32(n int, a []float32) bool {
	if n == 0 {
		return true
	}
	mirrorUpper(a, n)
	const colMajor = 102 // LAPACK_COL_MAJOR
	vals := make([]float32, n)
	work, iwork := []float32{0}, []int32{0}
	call := func(lwork, liwork int) bool {
		return C.LAPACKE_ssyevd_work(colMajor, 'V', 'U', C.int(n), (*C.float)(&a[0]), C.int(n),
			(*C.float)(&vals[0]), (*C.float)(&work[0]), C.int(lwork), (*C.int)(&iwork[0]), C.int(liwork)) == 0
	}
	if !call(-1, -1) {
		return false
	}
	work, iwork = make([]float32, lworkFromQuery32(work[0])), make([]int32, iwork[0])
	if !call(len(work), len(iwork)) {
		return false
	}
	reverseRows(a, n)
	return true
}

// lworkFromQuery32 returns the workspace length to allocate for a
// single-precision LAPACK routine whose workspace query answered q. LAPACK
// returns that length in WORK(1), a REAL, which above 2²⁴ cannot hold every
// integer: LAPACK before 3.12 (OpenBLAS before 0.3.25; Debian 12 ships
// 0.3.21) rounds it to the nearest float32, often below the length the
// routine then demands (Reference-LAPACK issue 600). ssyevd wants
// 1 + 6n + 2n² with eigenvectors, above 2²⁴ from n = 2895 on; the rounded
// answer is short for every n from 2895 to 5793 and for about half of the
// larger ones, and ssyevd then rejects the workspace (INFO = -8) at once:
// this was the "did not converge" of the randomized route at 4250 x 4250. The next float32 above q is at or above
// the true length, whether q was rounded to nearest or up.
func lworkFromQuery32(q float32) int {
	return int(math.Nextafter32(q, math.MaxFloat32))
}
