package linalg

import (
	"math/rand/v2"
	"time"

	"gonum.org/v1/gonum/blas"
)

// GEMMRate measures the float32 matrix product rate of the build's BLAS: it
// multiplies two n x n matrices reps times (at least once) and returns the
// best rate in GFLOP/s (2n³ floating-point operations per product) and the
// time of that best product. Benchmarks divide a workload's operation count
// by it to get the floor that workload could reach on this machine.
func GEMMRate(n, reps int) (gflops float64, best time.Duration) {
	rng := rand.New(rand.NewPCG(1, 2))
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
	for i := range a {
		a[i], b[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
	}
	for i := range max(reps, 1) {
		start := time.Now()
		gemm32(blas.NoTrans, blas.NoTrans, n, n, n, a, n, b, n, c, n)
		if d := time.Since(start); i == 0 || d < best {
			best = d
		}
	}
	return 2 * float64(n) * float64(n) * float64(n) / best.Seconds() / 1e9, best
}

// RandomizedFLOPs is the operation count the compression floor charges for
// a rank-k truncated SVD of a rows x cols matrix: a randomized SVD with one
// power iteration makes four passes over the matrix with k columns
// (8·rows·cols·k) and orthonormalises a short-side basis of k columns by
// Householder QR with explicit Q (4·min(rows, cols)·k²).
func RandomizedFLOPs(rows, cols, k int) float64 {
	r, c, kk := float64(rows), float64(cols), float64(k)
	return 8*r*c*kk + 4*float64(min(rows, cols))*kk*kk
}

// ProductFLOPs is the operation count of rebuilding a rows x cols matrix from
// rank-k factors: one product, 2·rows·cols·k.
func ProductFLOPs(rows, cols, k int) float64 {
	return 2 * float64(rows) * float64(cols) * float64(k)
}
