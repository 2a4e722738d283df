package dtype

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeKnownBytes(t *testing.T) {
	tests := []struct {
		name string
		dt   safetensors.DType
		src  []byte
		want []float32
	}{
		{"BF16", safetensors.BF16, []byte{0x80, 0x3f, 0x00, 0xc0, 0x00, 0x00, 0x49, 0x40, 0x80, 0x7f}, []float32{1, -2, 0, 3.140625, float32(math.Inf(1))}},
		{"F16", safetensors.F16, []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b}, []float32{1, -2, 0x1p-24, 65504}},
		{"F32", safetensors.F32, []byte{0x00, 0x00, 0x80, 0x3f, 0xdb, 0x0f, 0x49, 0xc0}, []float32{1, -math.Pi}},
		{"F64", safetensors.F64, []byte{0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0, 0xc0}, []float32{1, -2}},
		{"empty", safetensors.BF16, []byte{}, []float32{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make([]float32, len(tc.want))
			require.NoError(t, Decode(got, tc.src, tc.dt))
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestDecodeBF16LongMatchesScalar(t *testing.T) {
	// Lengths around the boundaries of the 8-element fast path.
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 7, 8, 9, 16, 17, 1000} {
		src := make([]byte, 2*n)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		got := make([]float32, n)
		require.NoError(t, Decode(got, src, safetensors.BF16))
		for i := range n {
			want := Float32FromBF16(uint16(src[2*i]) | uint16(src[2*i+1])<<8)
			require.Equal(t, math.Float32bits(want), math.Float32bits(got[i]), "n=%d i=%d", n, i)
		}
	}
}

func TestDecodeF64Narrowing(t *testing.T) {
	tests := []struct {
		name string
		in   float64
		want float32
	}{
		{"exact", 0.5, 0.5},
		{"tie 1+2^-24 to even 1", 1 + 0x1p-24, 1},
		{"tie 1+3*2^-24 to even 1+2^-22", 1 + 3*0x1p-24, 1 + 0x1p-22},
		{"above tie", 1 + 0x1p-24 + 0x1p-40, 1 + 0x1p-23},
		{"overflow", 1e300, float32(math.Inf(1))},
		{"negative overflow", -1e300, float32(math.Inf(-1))},
		{"underflow", 1e-50, 0},
		{"float32 subnormal", 0x1p-140, 0x1p-140},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := make([]byte, 8)
			require.NoError(t, putF64(src, tc.in))
			got := make([]float32, 1)
			require.NoError(t, Decode(got, src, safetensors.F64))
			assert.Equal(t, tc.want, got[0])
		})
	}
}

// putF64 writes v as one little-endian float64, independently of Encode.
func putF64(dst []byte, v float64) error {
	b := math.Float64bits(v)
	for i := range 8 {
		dst[i] = byte(b >> (8 * i))
	}
	return nil
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32, safetensors.F64} {
		t.Run(dt.String(), func(t *testing.T) {
			// Values representable in every dtype: small integers times 2^-4.
			src := make([]float32, 77)
			for i := range src {
				src[i] = float32(int(rng.IntN(256))-128) / 16
			}
			buf := make([]byte, len(src)*int(dt.Size()))
			require.NoError(t, Encode(buf, src, dt))
			got := make([]float32, len(src))
			require.NoError(t, Decode(got, buf, dt))
			assert.Equal(t, src, got)
		})
	}
}

func TestEncodeRounds(t *testing.T) {
	buf := make([]byte, 4)
	require.NoError(t, Encode(buf, []float32{1 + 0x1p-8, 1 + 3*0x1p-8}, safetensors.BF16))
	assert.Equal(t, []byte{0x80, 0x3f, 0x82, 0x3f}, buf)
	require.NoError(t, Encode(buf, []float32{1 + 0x1p-11, 1e6}, safetensors.F16))
	assert.Equal(t, []byte{0x00, 0x3c, 0x00, 0x7c}, buf)
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name   string
		dt     safetensors.DType
		nElems int
		nBytes int
		want   error
	}{
		{"U8", safetensors.U8, 2, 2, ErrUnsupported},
		{"I32", safetensors.I32, 1, 4, ErrUnsupported},
		{"invalid dtype value", safetensors.DType(200), 1, 2, ErrUnsupported},
		{"short", safetensors.BF16, 3, 4, ErrLength},
		{"long", safetensors.F32, 1, 5, ErrLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]float32, tc.nElems)
			assert.ErrorIs(t, Decode(dst, make([]byte, tc.nBytes), tc.dt), tc.want)
			assert.ErrorIs(t, Encode(make([]byte, tc.nBytes), dst, tc.dt), tc.want)
		})
	}
	_, err := CountNonFinite(make([]byte, 3), safetensors.BF16)
	assert.ErrorIs(t, err, ErrLength)
	_, err = CountNonFinite(make([]byte, 4), safetensors.I16)
	assert.ErrorIs(t, err, ErrUnsupported)
	_, err = CountNonFinite(nil, safetensors.DType(99))
	assert.ErrorIs(t, err, ErrUnsupported)
}

func TestIsFloat(t *testing.T) {
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32, safetensors.F64} {
		assert.True(t, IsFloat(dt), dt.String())
	}
	for _, dt := range []safetensors.DType{safetensors.BOOL, safetensors.U8, safetensors.I64, safetensors.DType(77)} {
		assert.False(t, IsFloat(dt))
	}
}

func TestCountNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	vals := []float32{1, nan, -inf, 0, inf, 3e38, -0.5}
	for _, tc := range []struct {
		dt   safetensors.DType
		want int
	}{
		{safetensors.BF16, 3}, // 3e38 is finite in bf16 (max ~3.39e38)
		{safetensors.F16, 4},  // Encode overflows 3e38 to half Inf
		{safetensors.F32, 3},
		{safetensors.F64, 3},
	} {
		t.Run(tc.dt.String(), func(t *testing.T) {
			buf := make([]byte, len(vals)*int(tc.dt.Size()))
			require.NoError(t, Encode(buf, vals, tc.dt))
			n, err := CountNonFinite(buf, tc.dt)
			require.NoError(t, err)
			assert.Equal(t, tc.want, n)
		})
	}
	// F64 values finite in float64 but beyond float32 count, since Decode makes them Inf.
	buf := make([]byte, 16)
	require.NoError(t, putF64(buf, 1e300))
	require.NoError(t, putF64(buf[8:], 1))
	n, err := CountNonFinite(buf, safetensors.F64)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

func BenchmarkDecodeBF16(b *testing.B) {
	const n = 16 << 20 // 16M elements: a 4096x4096 projection
	src := make([]byte, 2*n)
	rng := rand.New(rand.NewPCG(9, 10))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	dst := make([]float32, n)
	b.SetBytes(2 * n)
	b.ResetTimer()
	for b.Loop() {
		if err := Decode(dst, src, safetensors.BF16); err != nil {
			b.Fatal(err)
		}
	}
}
