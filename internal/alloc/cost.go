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
	kept, sum := countBits(bits)
	return costOf(rows, cols, groupSize, LayoutAsym, kept, sum)
}

// countBits returns the number of nonzero widths of bits and their sum,
// panicking on a width outside [0, MaxBits].
func countBits(bits []int) (kept int, sum int64) {
	for i, b := range bits {
		if b < 0 || b > MaxBits {
			panic(fmt.Sprintf("alloc: bits[%d] = %d outside [0, %d]", i, b, MaxBits))
		}
		if b > 0 {
			kept++
			sum += int64(b)
		}
	}
	return kept, sum
}

// Layout is how a kept pair stores what it needs besides its codes.
type Layout int

const (
	// LayoutAsym is the layout Cost counts (storage kind "lowrank"): a bf16
	// scale and minimum per group of u and of v, and a float32 sigma.
	LayoutAsym Layout = iota
	// LayoutSym is the symmetric grid's (kind "lowrank-sym"): one bf16
	// scale per group of u and of v, no minimum, sigma folded into u's
	// scales; a group size of 0 means one group per vector.
	LayoutSym
)

// CostSym is Cost for LayoutSym: the same code streams, and per kept pair
// (ceil(rows/g) + ceil(cols/g))·2 bytes of bf16 scales, one scale per
// vector (2 + 2 bytes) when groupSize is 0. It panics as Cost does, but
// accepts a groupSize of 0.
func CostSym(rows, cols, groupSize int, bits []int) int64 {
	checkShape(rows, cols, max(groupSize, 1))
	if groupSize < 0 {
		panic(fmt.Sprintf("alloc: negative group size %d", groupSize))
	}
	kept, sum := countBits(bits)
	return costOf(rows, cols, groupSize, LayoutSym, kept, sum)
}

// costOf is the cost of a plan that keeps `kept` pairs whose widths add up
// to sumBits in layout l. Cost depends on a plan only through these two
// numbers.
func costOf(rows, cols, groupSize int, l Layout, kept int, sumBits int64) int64 {
	codes := ceilDiv(int64(rows)*sumBits, 8) + ceilDiv(int64(cols)*sumBits, 8)
	return codes + int64(kept)*pairOverhead(rows, cols, groupSize, l)
}

// symScaleBytes is the size of one group's bf16 scale in LayoutSym.
const symScaleBytes = 2

// pairOverhead is the number of bytes each kept pair stores besides its
// codes in layout l.
func pairOverhead(rows, cols, groupSize int, l Layout) int64 {
	if l == LayoutSym {
		if groupSize == 0 {
			return 2 * symScaleBytes
		}
		return (ceilDiv(int64(rows), int64(groupSize)) + ceilDiv(int64(cols), int64(groupSize))) * symScaleBytes
	}
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
