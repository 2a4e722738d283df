// Package dtype owns the conversion between the element encodings found in
// checkpoints (safetensors BF16, F16, F32 and F64, little-endian) and float32,
// the working precision of the rest of deltacome.
//
// The scalar functions (Float32FromBF16, BF16FromFloat32, Float32FromF16,
// F16FromFloat32) convert one value; Decode and Encode convert whole tensors
// without allocating; CountNonFinite lets callers reject tensors holding NaN or
// ±Inf before doing any arithmetic on them.
//
// Narrowing conversions (float32 to BF16 or F16, F64 to float32) round to
// nearest, ties to even, as IEEE 754 and PyTorch do. NaN stays a quiet NaN with
// its sign, ±Inf stays ±Inf, and finite values too large for the target become
// ±Inf. This package never panics on data; it returns errors wrapping
// ErrUnsupported or ErrLength for dtypes and buffer sizes it cannot handle.
package dtype
