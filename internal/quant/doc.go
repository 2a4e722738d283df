// Package quant owns the data-free quantization of one vector and the dense
// bit packing of its codes: the "quantize each kept singular vector" step of
// Delta-CoMe (arXiv 2406.08903, Sec. 3.2), done by round to nearest (RTN)
// instead of the paper's GPTQ, which needs calibration data.
//
// # Quantization
//
// A vector is cut into groups of Options.GroupSize consecutive elements (the
// last may be shorter). Each group g has an asymmetric uniform grid of 2^b
// levels, b in 1..8, given by a scale s[g] and a minimum m[g], both stored as
// bfloat16:
//
//	x_hat[i] = m[g] + float32(code[i] * s[g])     code[i] in 0 .. 2^b-1
//
// computed in float32 with the product rounded before the sum. Quantize picks
// the codes for the bf16-rounded s and m, so the squared error it returns is
// exactly that of Dequantize's output. With Options.ClipSearch, the grid of
// each group is searched (range shrinking, per-end moves, least-squares refit,
// and from 5 bits bf16 neighbours) for the smallest squared error, which on
// Gaussian vectors lowers it by about 56% at 2 bits, 30% at 3, 16% at 4 and
// 8% at 8 (TestClipSearchGain), for about 10 times the work.
//
// # Packed code streams (on-disk format)
//
// Codes are packed densely, least significant bit first. A stream is a
// sequence of bits; stream bit j is bit j%8 (the bit of value 1<<(j%8)) of
// byte j/8. The codes are laid back to back: a code of width b starting at
// stream bit p occupies stream bits p .. p+b-1, its least significant bit at
// stream bit p. So the first code sits in the lowest bits of byte 0, and codes
// straddle byte boundaries whenever the width does not divide the offset. A
// stream may mix widths (BitWriter, e.g. one vector at 8 bits followed by
// vectors at 3 bits) with no padding between codes; the reader must know the
// width of every code. The stream ends padded with zero bits to a whole byte:
// n codes of width b take PackedLen(n, b) = ceil(n*b/8) bytes.
//
// For example, the 3-bit codes 5, 3, 6 pack into the bits 101, 011, 110 read
// from bit 0 up, that is bytes 0b10011101 0b00000001 (0x9d 0x01).
//
// Functions panic on programmer errors only: a bit width outside 1..MaxBits, a
// group size <= 0, or slices whose lengths disagree, as each one documents.
// Reading a truncated stream returns an error wrapping ErrShortStream.
package quant
