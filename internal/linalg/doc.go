// Package linalg owns the linear algebra of delta compression: the truncated
// singular value decomposition Delta ≈ U diag(S) Vᵀ of one weight delta
// (Delta-CoMe, arXiv 2406.08903, step 2 of the method), the matrix products
// of reconstruction, and the choice of BLAS/LAPACK backend.
//
// Inputs are float32 matrices in row-major order, as they come out of a
// checkpoint; the factors are returned as float32. The result layout puts
// each singular vector in one contiguous slice, because the quantizer works
// on one vector at a time.
//
// Two routes share one result type and sign convention (the
// largest-magnitude entry of each left singular vector is positive): Exact,
// the eigendecomposition of the smaller Gram matrix in float64, and
// Randomized, a block Krylov method (Musco and Musco, 2015, within the
// randomized framework of Halko, Martinsson and Tropp, 2011) on the float32
// Gram matrix, whose products run in float32 and whose orthonormalisations
// run in float64. Truncated picks one by Route. The randomized route
// checks its float32 arithmetic for breakdown and then falls back to float64
// (see Randomized); SVD.Route and SVD.Fallback say which route computed a
// result and why it was not the one asked for.
//
// # Backends
//
// The default build uses gonum's pure-Go BLAS and LAPACK (Backend says
// which). Built with -tags openblas, the same code calls OpenBLAS and LAPACKE
// through cgo (gonum.org/v1/netlib; Debian packages libopenblas-dev and
// liblapacke-dev): products 5-10 times faster, and the symmetric
// eigenproblem by LAPACK's dsyevr, which computes only the pairs asked for.
// gonum's pure-Go products with a transposed operand are slow, so on that
// backend transposes are copied out first (see gemm32).
//
// Results are the same bits whatever the number of cores, goroutines or
// OPENBLAS_NUM_THREADS: products are cut into tiles whose shape depends on
// the operands' shapes only (see productTile), each tile summed by one call
// to a single-threaded BLAS; LAPACK runs single-threaded; the randomized
// route's test matrix comes from PCG streams keyed by block; every parallel
// loop writes disjoint outputs. Between backends, and between CPUs for which
// OpenBLAS picks other kernels (see Kernel), the products sum in different
// orders, so factors may differ in their last bits.
package linalg
