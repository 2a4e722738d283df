package quant

import (
	"fmt"
	"math"

	"github.com/deltacome/deltacome/internal/dtype"
)

// Symmetric grid search parameters, tuned on Gaussian vectors of 4096
// entries (the statistics of singular vectors): the best half step lies near
// 0.39 of max|x|/maxQ at 2 bits, 0.2 at 1 bit and near 1 at 8 bits.
const (
	// symShrink is the factor between consecutive candidate half steps,
	// starting from the grid that reaches max|x|.
	symShrink = 0.92
	// symMaxSteps bounds the shrink at symShrink^40, about 0.036 of the
	// full-range step: below the 1-bit optimum on any vector of up to 2^20
	// Gaussian entries.
	symMaxSteps = 40
	// symPatience stops the shrink after this many candidates in a row
	// without improvement (the error is nearly unimodal in the step).
	symPatience = 3
)

// SymGroups returns the number of scales of a vector of n elements with
// groups of groupSize (0: one group, the whole vector).
func SymGroups(n, groupSize int) int {
	if groupSize == 0 {
		return 1
	}
	return NumGroups(n, groupSize)
}

// QuantizeSym quantizes x with round to nearest on a symmetric grid of 2^bits
// levels per group of groupSize consecutive elements (0: the whole vector is
// one group), one bfloat16 scale per group and no minimum:
//
//	x_hat[i] = float32(2*code[i] - maxQ) * scale[g]     maxQ = 2^bits - 1
//
// so the levels are the odd multiples of the half step scale[g], from
// -maxQ·scale to +maxQ·scale (1 bit: ±scale). It writes one code per element
// into codes and each group's scale into scales as a bf16 bit pattern, and
// returns the squared error of DequantizeSym's output, accumulated in
// float64. The scale of each group is searched: shrinking the grid from the
// one reaching max|x| by symShrink per step, then refitting the scale to the
// codes by least squares (up to lsMaxIter times), then trying the bf16
// neighbours of the best scale. A group of zeros gets scale 0.
//
// It panics if bits is outside 1..MaxBits, groupSize < 0, len(codes) !=
// len(x) or len(scales) != SymGroups(len(x), groupSize). x should be finite.
func QuantizeSym(x []float32, bits, groupSize int, codes []uint8, scales []uint16) (sqErr float64) {
	checkBits(bits)
	ng, g := symShape(len(x), groupSize)
	if len(codes) != len(x) || len(scales) != ng {
		panic(fmt.Sprintf("quant: QuantizeSym: %d elements in groups of %d need %d codes and %d scales, got %d and %d",
			len(x), groupSize, len(x), ng, len(codes), len(scales)))
	}
	maxQ := float64(int(1)<<bits - 1)
	for k := range ng {
		lo, hi := k*g, min((k+1)*g, len(x))
		s, e := fitSym(x[lo:hi], maxQ)
		encodeSym(x[lo:hi], s, maxQ, codes[lo:hi])
		scales[k] = s
		sqErr += e
	}
	return sqErr
}

// DequantizeSym writes float32(2*code[i] - maxQ) * scale[g] into dst[i]
// (codes masked to their low bits bits). It panics as QuantizeSym does on
// bad lengths.
func DequantizeSym(dst []float32, codes []uint8, scales []uint16, bits, groupSize int) {
	checkBits(bits)
	ng, g := symShape(len(dst), groupSize)
	if len(codes) != len(dst) || len(scales) != ng {
		panic(fmt.Sprintf("quant: DequantizeSym: %d elements in groups of %d need %d codes and %d scales, got %d and %d",
			len(dst), groupSize, len(dst), ng, len(codes), len(scales)))
	}
	mask := uint8(1<<bits - 1)
	var table [1 << MaxBits]float32
	for k := range ng {
		lo, hi := k*g, min((k+1)*g, len(dst))
		s := dtype.Float32FromBF16(scales[k])
		for c := range int(mask) + 1 {
			table[c] = float32(2*c-int(mask)) * s
		}
		d, c := dst[lo:hi], codes[lo:hi]
		for i := range d {
			d[i] = table[c[i]&mask]
		}
	}
}

// symShape returns the number of groups of a vector of n elements and the
// group length in use.
func symShape(n, groupSize int) (groups, g int) {
	if groupSize < 0 {
		panic(fmt.Sprintf("quant: negative group size %d", groupSize))
	}
	if groupSize == 0 {
		return 1, max(n, 1)
	}
	return NumGroups(n, groupSize), groupSize
}

// symCode returns the code of v for the half step s (inv = 1/s):
// round((v/s + maxQ) / 2) clamped to 0..maxQ.
func symCode(v float32, inv, maxQ float64) int {
	t := (float64(v)*inv + maxQ) * 0.5
	if !(t >= 0) {
		t = 0
	}
	if t > maxQ {
		t = maxQ
	}
	return int(t + 0.5)
}

// symErr returns the squared error of x on the grid of bf16 half step
// sBits, or a partial sum >= bound as soon as one reaches it.
func symErr(x []float32, sBits uint16, maxQ, bound float64) float64 {
	s := dtype.Float32FromBF16(sBits)
	var e float64
	if s == 0 {
		for _, v := range x {
			e += float64(v) * float64(v)
		}
		return e
	}
	inv := 1 / float64(s)
	const chunk = 64
	for len(x) > 0 && e < bound {
		c := x[:min(chunk, len(x))]
		x = x[len(c):]
		for _, v := range c {
			xh := float32(2*symCode(v, inv, maxQ)-int(maxQ)) * s
			d := float64(v) - float64(xh)
			e += d * d
		}
	}
	return e
}

// usableScale reports whether the bf16 half step sBits gives a finite,
// positive grid.
func usableScale(sBits uint16, maxQ float64) bool {
	s := dtype.Float32FromBF16(sBits)
	top := float32(maxQ) * s
	return s > 0 && !math.IsInf(float64(top), 0)
}

// fitSym returns the bf16 half step for x and its squared error.
func fitSym(x []float32, maxQ float64) (uint16, float64) {
	var amax float64
	for _, v := range x {
		amax = max(amax, math.Abs(float64(v)))
	}
	best, bestErr := uint16(0), symErr(x, 0, maxQ, math.Inf(1))
	try := func(sBits uint16) bool {
		if sBits == best || !usableScale(sBits, maxQ) {
			return false
		}
		if e := symErr(x, sBits, maxQ, bestErr); e < bestErr {
			best, bestErr = sBits, e
			return true
		}
		return false
	}
	if !(amax > 0) {
		return best, bestErr
	}
	s := amax / maxQ
	for i, misses := 0, 0; i <= symMaxSteps && misses < symPatience; i++ {
		if try(bf16Sat(s)) {
			misses = 0
		} else {
			misses++
		}
		s *= symShrink
	}
	if best == 0 {
		return best, bestErr
	}
	for range lsMaxIter { // s = Σ x q / Σ q² for the codes q of the best grid
		inv := 1 / float64(dtype.Float32FromBF16(best))
		var sxq, sqq float64
		for _, v := range x {
			q := float64(2*symCode(v, inv, maxQ)) - maxQ
			sxq += float64(v) * q
			sqq += q * q
		}
		if !(sxq > 0) || !try(bf16Sat(sxq/sqq)) {
			break
		}
	}
	for improved := true; improved; {
		improved = false
		center := best
		for _, d := range [...]uint16{1, 0xffff} { // bit-pattern steps +1, -1
			if try(center + d) {
				improved = true
			}
		}
	}
	return best, bestErr
}

// encodeSym writes the codes of x for the bf16 half step sBits.
func encodeSym(x []float32, sBits uint16, maxQ float64, codes []uint8) {
	codes = codes[:len(x)]
	s := dtype.Float32FromBF16(sBits)
	if s == 0 {
		clear(codes) // every code decodes to 0 on a zero scale
		return
	}
	inv := 1 / float64(s)
	for i, v := range x {
		codes[i] = uint8(symCode(v, inv, maxQ))
	}
}

// RoundSym returns the code of v on the symmetric grid of bf16 half step
// scale and 2^bits levels, round to nearest as QuantizeSym rounds, and the
// value DequantizeSym decodes it to. A zero scale gives code 0 and value 0.
// It panics if bits is outside 1..MaxBits.
func RoundSym(v float32, scale uint16, bits int) (code uint8, value float32) {
	checkBits(bits)
	s := dtype.Float32FromBF16(scale)
	if s == 0 {
		return 0, 0
	}
	maxQ := float64(int(1)<<bits - 1)
	c := symCode(v, 1/float64(s), maxQ)
	return uint8(c), float32(2*c-int(maxQ)) * s
}
