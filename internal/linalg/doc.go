// Package linalg owns the linear algebra of delta compression: the truncated
// singular value decomposition Delta ≈ U diag(S) Vᵀ of one weight delta
// (Delta-CoMe, arXiv 2406.08903, step 2 of the method).
//
// Inputs are float32 matrices in row-major order, as they come out of a
// checkpoint; the arithmetic runs in float64 and the factors are returned as
// float32. The result layout puts each singular vector in one contiguous
// slice, because the quantizer works on one vector at a time.
//
// Every route returns the same sign convention (the largest-magnitude entry
// of each left singular vector is positive), so outputs are reproducible
// whichever route or backend computed them. Exact is the pure-Go route built
// on gonum; a randomized route (Halko, Martinsson and Tropp, 2011) and an
// OpenBLAS/LAPACK backend are meant to sit beside it with the same signature
// and the same result type.
package linalg
