package dtype

import "math"

// Float32FromBF16 returns the float32 value of the bfloat16 bit pattern h.
// Every bfloat16 value, NaN payloads included, is exactly representable.
func Float32FromBF16(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// BF16FromFloat32 returns the bfloat16 bit pattern nearest to f, ties to even.
// NaN becomes a quiet NaN keeping the sign and the top payload bits, ±Inf stays
// ±Inf, and finite values whose magnitude rounds above the largest bfloat16
// (about 3.39e38) become ±Inf.
func BF16FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x0040 // 0x0040: the bfloat16 quiet bit (top mantissa bit)
	}
	// Adding 0x7fff plus the lowest kept bit rounds the 16 dropped bits to
	// nearest with ties to even; a carry out of the mantissa correctly bumps
	// the exponent, up to Inf.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// Float32FromF16 returns the float32 value of the IEEE 754 binary16 bit pattern
// h. Every half value, subnormals and NaN payloads included, is exactly
// representable.
func Float32FromF16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0: // zero or subnormal: mant * 2^-24, exact in float32
		f := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(sign | math.Float32bits(f))
	}
	// Normal: rebias the exponent from 15 to 127 (127-15 = 112).
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// F16FromFloat32 returns the IEEE 754 binary16 bit pattern nearest to f, ties
// to even. Values below the smallest half subnormal (2^-24) round to zero or to
// it, values that round above 65504 become ±Inf, NaN becomes a quiet NaN
// keeping the sign and the top payload bits.
func F16FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13) // 0x0200: the half quiet bit
		}
		return sign | 0x7c00
	}
	e := exp - 112 // half exponent field (bias 15) for a normal result
	switch {
	case e >= 0x1f:
		return sign | 0x7c00
	case e <= 0:
		// Subnormal half: the result is round(|f| / 2^-24). |f| = m * 2^(exp-150)
		// with the implicit bit in m, so |f| / 2^-24 = m >> (126-exp) = m >> (14-e).
		if e < -10 { // |f| < 2^-25, half the smallest subnormal: rounds to zero
			return sign
		}
		m := mant | 0x800000
		shift := uint(14 - e) // 14..24
		k := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && k&1 == 1 {
			k++ // may carry into the smallest normal, 0x0400, which is correct
		}
		return sign | uint16(k)
	}
	h := sign | uint16(e)<<10 | uint16(mant>>13)
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // a carry bumps the exponent, up to Inf (0x7c00)
	}
	return h
}
