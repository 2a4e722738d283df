// Package svdquant encodes the delta of one linear projection as quantized
// singular vectors and decodes it back (Delta-CoMe, arXiv 2406.08903).
//
// Encode: truncated SVD of Delta (internal/linalg), the error of every
// singular vector pair at every candidate width measured by actually
// quantizing it (internal/quant), a width per pair from the schedule under
// the matrix's byte budget (internal/alloc), then the blobs of the archive
// format (docs/FORMAT.md section 2.7). Decode (Factors.Product, Apply) is the
// exact inverse used by reconstruct, and Encode measures the error it
// records through that same path.
//
// Curve predicts, from one SVD and the same measurements, the error Encode
// would give at each of a ladder of budgets (LadderBudgets, ShareBudgets),
// without encoding: the first pass of an error target.
package svdquant
