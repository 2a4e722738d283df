package dtype

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func isNaN32(f float32) bool { return f != f }

func TestBF16RoundTripAllPatterns(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := Float32FromBF16(h)
		got := BF16FromFloat32(f)
		if h&0x7fff > 0x7f80 { // NaN: must stay NaN with the same sign
			require.True(t, isNaN32(f), "pattern %#04x", h)
			require.True(t, isNaN32(Float32FromBF16(got)), "pattern %#04x -> %#04x", h, got)
			require.Equal(t, h&0x8000, got&0x8000, "sign of NaN %#04x", h)
			continue
		}
		require.Equal(t, h, got, "pattern %#04x (%g)", h, f)
	}
}

func TestF16RoundTripAllPatterns(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := Float32FromF16(h)
		got := F16FromFloat32(f)
		if h&0x7fff > 0x7c00 {
			require.True(t, isNaN32(f), "pattern %#04x", h)
			require.True(t, isNaN32(Float32FromF16(got)), "pattern %#04x -> %#04x", h, got)
			require.Equal(t, h&0x8000, got&0x8000, "sign of NaN %#04x", h)
			continue
		}
		require.Equal(t, h, got, "pattern %#04x (%g)", h, f)
	}
}

func TestFloat32FromF16KnownValues(t *testing.T) {
	tests := []struct {
		h    uint16
		want float64
	}{
		{0x0000, 0},
		{0x3c00, 1},
		{0xc000, -2},
		{0x3555, 0x555p-10 * 0.25}, // 1.0101010101b * 2^-2 = 0.333251953125
		{0x7bff, 65504},            // largest finite half
		{0x0400, 0x1p-14},          // smallest normal
		{0x0001, 0x1p-24},          // smallest subnormal
		{0x03ff, 1023 * 0x1p-24},   // largest subnormal
		{0x8001, -0x1p-24},
		{0x7c00, math.Inf(1)},
		{0xfc00, math.Inf(-1)},
	}
	for _, tc := range tests {
		assert.Equal(t, float32(tc.want), Float32FromF16(tc.h), "%#04x", tc.h)
	}
	assert.True(t, math.Signbit(float64(Float32FromF16(0x8000))), "negative zero")
}

func TestBF16FromFloat32Rounding(t *testing.T) {
	tests := []struct {
		name string
		f    float32
		want uint16
	}{
		{"one", 1, 0x3f80},
		{"tie 1+2^-8 to even 1", 1 + 0x1p-8, 0x3f80},
		{"tie 1+3*2^-8 to even 1+2^-6", 1 + 3*0x1p-8, 0x3f82},
		{"above tie 1+2^-8+2^-23", 1 + 0x1p-8 + 0x1p-23, 0x3f81},
		{"below tie 1+2^-8-2^-23", math.Nextafter32(1+0x1p-8, 0), 0x3f80},
		{"negative tie", -(1 + 0x1p-8), 0xbf80},
		{"largest bf16 exact", (2 - 0x1p-7) * 0x1p127, 0x7f7f},
		{"tie above largest rounds to Inf", (2 - 0x1p-8) * 0x1p127, 0x7f80},
		{"MaxFloat32 overflows", math.MaxFloat32, 0x7f80},
		{"-MaxFloat32 overflows", -math.MaxFloat32, 0xff80},
		{"subnormal tie to zero", math.Float32frombits(0x00008000), 0x0000},
		{"subnormal tie to even 2", math.Float32frombits(0x00018000), 0x0002},
		{"subnormal rounds up to normal", math.Float32frombits(0x007fffff), 0x0080},
		{"Inf", float32(math.Inf(1)), 0x7f80},
		{"-Inf", float32(math.Inf(-1)), 0xff80},
		{"signaling NaN with low payload stays NaN", math.Float32frombits(0x7f800001), 0x7fc0},
		{"negative NaN", math.Float32frombits(0xff800001), 0xffc0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, BF16FromFloat32(tc.f))
		})
	}
}

// refBF16 rounds f to bfloat16 by comparing the distances, in float64 (exact
// for float32 neighbours), to the two bfloat16 values bracketing it.
func refBF16(f float32) uint16 {
	b := math.Float32bits(f)
	lo := b &^ 0xffff
	hi := lo + 0x10000 // next bfloat16 away from zero (may be Inf)
	dLo := math.Abs(float64(f) - float64(math.Float32frombits(lo)))
	var dHi float64
	if hi&0x7fffffff == 0x7f800000 {
		// Inf: treat it as the value 2^128, the next step of the binade, as IEEE does.
		dHi = math.Abs(math.Copysign(0x1p128, float64(f)) - float64(f))
	} else {
		dHi = math.Abs(float64(math.Float32frombits(hi)) - float64(f))
	}
	switch {
	case dLo < dHi:
		return uint16(lo >> 16)
	case dHi < dLo:
		return uint16(hi >> 16)
	case (lo>>16)&1 == 0:
		return uint16(lo >> 16)
	}
	return uint16(hi >> 16)
}

func TestBF16FromFloat32MatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		f := math.Float32frombits(rng.Uint32())
		if isNaN32(f) || math.IsInf(float64(f), 0) {
			continue
		}
		require.Equal(t, refBF16(f), BF16FromFloat32(f), "%#08x", math.Float32bits(f))
	}
}

func TestF16FromFloat32Rounding(t *testing.T) {
	tests := []struct {
		name string
		f    float32
		want uint16
	}{
		{"tie 1+2^-11 to even 1", 1 + 0x1p-11, 0x3c00},
		{"tie 1+3*2^-11 to even", 1 + 3*0x1p-11, 0x3c02},
		{"above tie", 1 + 0x1p-11 + 0x1p-23, 0x3c01},
		{"65504 exact", 65504, 0x7bff},
		{"65519 rounds down", 65519, 0x7bff},
		{"tie 65520 overflows to Inf", 65520, 0x7c00},
		{"1e6 overflows", 1e6, 0x7c00},
		{"-1e6 overflows", -1e6, 0xfc00},
		{"MaxFloat32 overflows", math.MaxFloat32, 0x7c00},
		{"smallest subnormal", 0x1p-24, 0x0001},
		{"tie 2^-25 to zero", 0x1p-25, 0x0000},
		{"just above 2^-25", 0x1p-25 + 0x1p-40, 0x0001},
		{"tie 3*2^-25 to even 2", 3 * 0x1p-25, 0x0002},
		{"tie 5*2^-25 to even 2", 5 * 0x1p-25, 0x0002},
		{"tiny to zero", 1e-30, 0x0000},
		{"tiny negative to negative zero", -1e-30, 0x8000},
		{"largest subnormal", 1023 * 0x1p-24, 0x03ff},
		{"subnormal rounds up to smallest normal", 1023.5 * 0x1p-24, 0x0400},
		{"smallest normal", 0x1p-14, 0x0400},
		{"float32 subnormal to zero", math.Float32frombits(1), 0x0000},
		{"Inf", float32(math.Inf(1)), 0x7c00},
		{"NaN stays NaN", math.Float32frombits(0x7f800001), 0x7e00},
		{"negative NaN", math.Float32frombits(0xffc00000), 0xfe00},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, F16FromFloat32(tc.f))
		})
	}
}

// refF16 rounds f to half by searching the sorted table of all positive finite
// halves (patterns 0x0000..0x7bff increase with their value) for the two
// neighbours and comparing distances in float64.
func refF16(table []float64, f float32) uint16 {
	var sign uint16
	v := float64(f)
	if v < 0 || v == 0 && math.Signbit(v) {
		sign, v = 0x8000, -v
	}
	if v >= 65520 { // halfway from 65504 to 2^16, the next step: ties go to Inf (even)
		return sign | 0x7c00
	}
	i := sort.SearchFloat64s(table, v) // first index with table[i] >= v
	if i == len(table) {               // 65504 < v < 65520: nearer to 65504 than to 2^16
		return sign | uint16(i-1)
	}
	if table[i] == v {
		return sign | uint16(i)
	}
	dLo, dHi := v-table[i-1], table[i]-v
	switch {
	case dLo < dHi:
		return sign | uint16(i-1)
	case dHi < dLo:
		return sign | uint16(i)
	case (i-1)&1 == 0:
		return sign | uint16(i-1)
	}
	return sign | uint16(i)
}

func TestF16FromFloat32MatchesReference(t *testing.T) {
	table := make([]float64, 0x7c00)
	for i := range table {
		table[i] = float64(Float32FromF16(uint16(i)))
	}
	require.True(t, sort.Float64sAreSorted(table))
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200_000 {
		// Exponents 96..143 cover the half range with margins on both sides.
		b := rng.Uint32()&0x807fffff | (96+rng.Uint32N(48))<<23
		f := math.Float32frombits(b)
		require.Equal(t, refF16(table, f), F16FromFloat32(f), "%#08x (%g)", b, f)
	}
}
