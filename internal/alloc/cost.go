package alloc

import "fmt"

// MaxBits is the widest code, in bits per entry, a singular vector can be
// quantized at: the packer stores codes of 1 to 8 bits.
const MaxBits = 8

// DefaultGroupSize is the quantization group length, in entries along one
// singular vector, used when Problem.GroupSize is zero: the paper's group size.
const DefaultGroupSize = 128

const (
	// groupBytes is what one quantization group stores besides its codes:
	// a bf16 scale and a bf16 minimum (2 + 2 bytes).
	groupBytes = 4
	// sigmaBytes is what each kept pair stores for its singular value: one
	// float32, kept apart from the unit vectors so that small scales cannot
	// underflow (see METHOD.md, pitfalls).
	sigmaBytes = 4
)

// Cost returns the exact number of bytes stored for a rows x cols matrix whose
// singular vector pair i is quantized at bits[i] bits per entry (0 = dropped),
// with groups of groupSize entries along each vector:
//
//	ceil(rows·Σbᵢ / 8) + ceil(cols·Σbᵢ / 8)          codes: the u codes of all kept pairs
//	                                                 packed back to back in one bit stream,
//	                                                 the v codes in another
//	+ K · ((ceil(rows/g) + ceil(cols/g))·4 + 4)      per kept pair: bf16 scale and minimum
//	                                                 per group of u and of v, float32 sigma
//
// where K is the number of nonzero entries of bits. This is the on-disk size
// the archive writer produces, so every budget decision in this package uses
// it. Cost panics if rows, cols or groupSize is not positive or an entry of
// bits is outside [0, MaxBits].
func Cost(rows, cols, groupSize int, bits []int) int64 {
	checkShape(rows, cols, groupSize)
	kept, sum := 0, int64(0)
	for i, b := range bits {
		if b < 0 || b > MaxBits {
			panic(fmt.Sprintf("alloc: bits[%d] = %d outside [0, %d]", i, b, MaxBits))
		}
		if b > 0 {
			kept++
			sum += int64(b)
		}
	}
	return costOf(rows, cols, groupSize, kept, sum)
}

// costOf is Cost for a plan that keeps `kept` pairs whose widths add up to
// sumBits. Cost depends on a plan only through these two numbers.
func costOf(rows, cols, groupSize, kept int, sumBits int64) int64 {
	codes := ceilDiv(int64(rows)*sumBits, 8) + ceilDiv(int64(cols)*sumBits, 8)
	return codes + int64(kept)*pairOverhead(rows, cols, groupSize)
}

// pairOverhead is the number of bytes each kept pair stores besides its codes.
func pairOverhead(rows, cols, groupSize int) int64 {
	groups := ceilDiv(int64(rows), int64(groupSize)) + ceilDiv(int64(cols), int64(groupSize))
	return groups*groupBytes + sigmaBytes
}

// ceilDiv returns ceil(a / b) for a ≥ 0, b > 0.
func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// checkShape panics unless rows, cols and groupSize are positive.
func checkShape(rows, cols, groupSize int) {
	if rows <= 0 || cols <= 0 || groupSize <= 0 {
		panic(fmt.Sprintf("alloc: bad shape %d x %d with group size %d", rows, cols, groupSize))
	}
}
