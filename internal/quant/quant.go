package quant

import (
	"fmt"
	"math"

	"github.com/deltacome/deltacome/internal/dtype"
)

// MaxBits is the widest code width Quantize and the bit packing support.
const MaxBits = 8

// DefaultGroupSize is the number of consecutive elements sharing one scale and
// minimum, as in the Delta-CoMe paper (arXiv 2406.08903, Sec. 4.1: group size
// 128).
const DefaultGroupSize = 128

// Options configures Quantize and QuantizeError.
type Options struct {
	// GroupSize is the number of consecutive elements sharing one scale and
	// one minimum; the last group of a vector may be shorter. It must be > 0.
	GroupSize int
	// ClipSearch makes each group's grid the one with the smallest squared
	// error among a set of shrunk [min, max] ranges refined by least squares,
	// instead of the plain [min, max] grid. It is never worse than plain on
	// the same group and lowers the error most at 2 and 3 bits.
	ClipSearch bool
}

// DefaultOptions returns the recommended options: DefaultGroupSize with
// ClipSearch on. The zero Options is not usable (GroupSize 0 panics).
func DefaultOptions() Options {
	return Options{GroupSize: DefaultGroupSize, ClipSearch: true}
}

// NumGroups returns the number of groups of groupSize consecutive elements
// covering n elements, that is ceil(n / groupSize). It panics if groupSize <= 0
// or n < 0.
func NumGroups(n, groupSize int) int {
	if groupSize <= 0 || n < 0 {
		panic(fmt.Sprintf("quant: NumGroups(%d, %d): need n >= 0 and groupSize > 0", n, groupSize))
	}
	return (n + groupSize - 1) / groupSize
}

func checkBits(bits int) {
	if bits < 1 || bits > MaxBits {
		panic(fmt.Sprintf("quant: bit width %d outside 1..%d", bits, MaxBits))
	}
}

// Quantize quantizes x with round to nearest on an asymmetric uniform grid of
// 2^bits levels per group of opt.GroupSize consecutive elements:
//
//	x_hat[i] = min[g] + code[i]*scale[g]   (code in 0..2^bits-1)
//
// evaluated in float32 exactly as Dequantize does. It writes one code per
// element into codes (unpacked, each < 2^bits), the scale and minimum of each
// group into scales and mins as bfloat16 bit patterns, and returns the squared
// error sum((x[i] - x_hat[i])^2) accumulated in float64. The codes are chosen
// for the bf16-rounded scale and minimum actually stored, so the returned
// error is exactly that of Dequantize's output.
//
// A group whose values are all equal, or whose scale rounds to 0 in bf16, gets
// scale 0, codes 0 and min = bf16(its minimum). For finite x the stored scales
// and minimums and Dequantize's output are finite; if the plain grid of a
// group near the float32 limits (|x| ~ 1e38) would overflow, that group falls
// back to scale 0 and min = bf16 of its midpoint.
//
// Quantize allocates nothing. It panics if bits is outside 1..MaxBits,
// opt.GroupSize <= 0, len(codes) != len(x), or len(scales) or len(mins) differs
// from NumGroups(len(x), opt.GroupSize). x should be finite (see
// dtype.CountNonFinite): NaN or Inf elements give valid but meaningless codes,
// scales and minimums, and an unspecified error.
func Quantize(x []float32, bits int, opt Options, codes []uint8, scales, mins []uint16) (sqErr float64) {
	checkBits(bits)
	nGroups := NumGroups(len(x), opt.GroupSize)
	if len(codes) != len(x) || len(scales) != nGroups || len(mins) != nGroups {
		panic(fmt.Sprintf("quant: Quantize: %d elements in groups of %d need %d codes and %d scales and mins, got %d, %d, %d",
			len(x), opt.GroupSize, len(x), nGroups, len(codes), len(scales), len(mins)))
	}
	q := newGroupQuantizer(bits, opt.ClipSearch)
	for g := range nGroups {
		lo, hi := g*opt.GroupSize, min((g+1)*opt.GroupSize, len(x))
		gr, e := q.fit(x[lo:hi])
		gr.encode(x[lo:hi], q.maxQ, codes[lo:hi])
		scales[g], mins[g] = gr.sBits, gr.mBits
		sqErr += e
	}
	return sqErr
}

// QuantizeError returns the squared error Quantize would return for x, bits
// and opt, without producing codes. It allocates nothing; bit allocators call
// it for every vector at every candidate width. It panics as Quantize does.
func QuantizeError(x []float32, bits int, opt Options) (sqErr float64) {
	checkBits(bits)
	nGroups := NumGroups(len(x), opt.GroupSize)
	q := newGroupQuantizer(bits, opt.ClipSearch)
	for g := range nGroups {
		lo, hi := g*opt.GroupSize, min((g+1)*opt.GroupSize, len(x))
		_, e := q.fit(x[lo:hi])
		sqErr += e
	}
	return sqErr
}

// Dequantize writes min[g] + code[i]*scale[g], computed in float32 with the
// product rounded before the sum (no fused multiply-add), into dst[i] for the
// group g = i / groupSize holding element i. Codes are masked to their low
// bits bits. It panics if bits is outside 1..MaxBits, groupSize <= 0,
// len(codes) != len(dst), or len(scales) or len(mins) differs from
// NumGroups(len(dst), groupSize).
func Dequantize(dst []float32, codes []uint8, scales, mins []uint16, bits, groupSize int) {
	checkBits(bits)
	nGroups := NumGroups(len(dst), groupSize)
	if len(codes) != len(dst) || len(scales) != nGroups || len(mins) != nGroups {
		panic(fmt.Sprintf("quant: Dequantize: %d elements in groups of %d need %d codes and %d scales and mins, got %d, %d, %d",
			len(dst), groupSize, len(dst), nGroups, len(codes), len(scales), len(mins)))
	}
	mask := uint8(1<<bits - 1)
	var table [1 << MaxBits]float32 // the group's grid, indexed by code
	for g := range nGroups {
		lo, hi := g*groupSize, min((g+1)*groupSize, len(dst))
		s, m := dtype.Float32FromBF16(scales[g]), dtype.Float32FromBF16(mins[g])
		for c := range int(mask) + 1 {
			table[c] = m + float32(float32(c)*s)
		}
		d, c := dst[lo:hi], codes[lo:hi]
		c = c[:len(d)]
		for i := range d {
			d[i] = table[c[i]&mask]
		}
	}
}

// grid is one group's stored quantization grid.
type grid struct {
	m, s         float32 // minimum and scale, exactly the bf16 values stored
	mBits, sBits uint16
}

// bf16Sat rounds v to bf16 to nearest even, saturating finite values that
// would round to ±Inf at the largest finite bf16 (0x7f7f, about 3.39e38).
func bf16Sat(v float64) uint16 {
	const maxBF16 = 0x1.fep127 // (2 - 2^-7) * 2^127, bit pattern 0x7f7f
	v = max(-maxBF16, min(maxBF16, v))
	return dtype.BF16FromFloat32(float32(v))
}

// newGrid returns the grid of maxQ+1 levels spanning [lo, hi] after bf16
// rounding of the scale and minimum, and whether it is usable (see
// gridFromBits).
func newGrid(lo, hi, maxQ float64) (grid, bool) {
	return gridFromBits(bf16Sat((hi-lo)/maxQ), bf16Sat(lo), maxQ)
}

// constGrid returns the scale-0 grid whose only value is bf16(v).
func constGrid(v float64) grid {
	g := grid{mBits: bf16Sat(v)}
	g.m = dtype.Float32FromBF16(g.mBits)
	return g
}

// code returns the code of v on grid g: round((v - m) / s) clamped to
// 0..maxQ, computed in float64 so that tiny scales cannot overflow.
func (g grid) code(v float32, m64, inv, maxQ float64) float32 {
	t := (float64(v) - m64) * inv
	// No builtin min/max: their NaN and -0 handling costs ~40% here. The
	// negated test also sends a NaN (from NaN input) to code 0.
	if !(t >= 0) {
		t = 0
	}
	if t > maxQ {
		t = maxQ
	}
	return float32(int32(t + 0.5)) // t >= 0: truncating t+0.5 rounds half up
}

// sqErr returns the squared error of x on grid g.
func (g grid) sqErr(x []float32, maxQ float64) float64 {
	return g.sqErrBelow(x, maxQ, math.Inf(1))
}

// sqErrBelow returns the squared error of x on grid g, or, as soon as a
// partial sum reaches bound, that partial sum: a value >= bound.
func (g grid) sqErrBelow(x []float32, maxQ, bound float64) float64 {
	// abandonChunk elements are summed between checks against bound: often
	// enough to skip most of a losing candidate (the search's usual case),
	// rarely enough to cost nothing measurable.
	const abandonChunk = 32
	var e float64
	if g.s == 0 {
		for _, v := range x {
			d := float64(v) - float64(g.m)
			e += d * d
		}
		return e
	}
	m64, inv := float64(g.m), 1/float64(g.s)
	for len(x) > 0 && e < bound {
		chunk := x[:min(abandonChunk, len(x))]
		x = x[len(chunk):]
		for _, v := range chunk {
			xh := g.m + float32(g.code(v, m64, inv, maxQ)*g.s)
			d := float64(v) - float64(xh)
			e += d * d
		}
	}
	return e
}

// encode writes the codes of x on grid g into codes.
func (g grid) encode(x []float32, maxQ float64, codes []uint8) {
	codes = codes[:len(x)]
	if g.s == 0 {
		clear(codes)
		return
	}
	m64, inv := float64(g.m), 1/float64(g.s)
	for i, v := range x {
		codes[i] = uint8(g.code(v, m64, inv, maxQ))
	}
}
