package bitdelta

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/pkg/archive"
)

func TestPack(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	cases := []struct {
		name  string
		delta []float32
		want  []byte
	}{
		{"empty", nil, []byte{}},
		{"one positive", []float32{0.5}, []byte{0x01}},
		{"one negative", []float32{-0.5}, []byte{0x00}},
		{"zero is positive", []float32{0}, []byte{0x01}},
		{"negative zero is positive", []float32{negZero}, []byte{0x01}},
		// bits from element 0 up: 1 0 1 0 1 1 1 0 = 0b01110101; then a lone
		// zero element in the next byte's lowest bit.
		{"byte and padding", []float32{1, -1, 0, -0.5, 2, negZero, 3, -3, 0}, []byte{0x75, 0x01}},
		{"tiny negatives", []float32{-1e-30, -math.SmallestNonzeroFloat32, 1e-30, 0, 0, 0, 0, 0}, []byte{0xfc}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := make([]byte, PackedLen(len(tc.delta)))
			Pack(got, tc.delta)
			assert.Equal(t, tc.want, got)

			// Unpacking gives +scale for every element >= 0, -scale below.
			const scale = 0.25
			back := make([]float32, len(tc.delta))
			require.NoError(t, Unpack(back, got, scale))
			for k, d := range tc.delta {
				want := float32(scale)
				if d < 0 {
					want = -scale
				}
				assert.Equal(t, want, back[k], "element %d (%v)", k, d)
			}
		})
	}
}

func TestPackedLenAndCost(t *testing.T) {
	for _, tc := range []struct {
		n, bytes int
	}{{0, 0}, {1, 1}, {8, 1}, {9, 2}, {384 * 1024, 49152}} {
		assert.Equal(t, tc.bytes, PackedLen(tc.n), "n=%d", tc.n)
		assert.Equal(t, int64(tc.bytes+4), Cost(tc.n), "n=%d", tc.n)
	}
}

func TestUnpackRejects(t *testing.T) {
	dst := make([]float32, 9)
	cases := []struct {
		name  string
		signs []byte
	}{
		{"short", []byte{0xff}},
		{"long", []byte{0xff, 0x01, 0x00}},
		{"padding bit set", []byte{0xff, 0x03}},
		{"high padding bit set", []byte{0xff, 0x80}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.ErrorIs(t, Unpack(dst, tc.signs, 1), archive.ErrFormat)
		})
	}
	assert.NoError(t, Unpack(dst, []byte{0xff, 0x01}, 1), "all padding bits zero")
}

func TestDecodeScale(t *testing.T) {
	enc := func(f float32) []byte { return binary.LittleEndian.AppendUint32(nil, math.Float32bits(f)) }
	cases := []struct {
		name string
		blob []byte
		ok   bool
	}{
		{"positive", enc(0.003), true},
		{"zero", enc(0), true},
		{"negative", enc(-1), false},
		{"NaN", enc(float32(math.NaN())), false},
		{"Inf", enc(float32(math.Inf(1))), false},
		{"short", []byte{0, 0}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeScale(tc.blob)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, archive.ErrFormat)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for _, n := range []int{1, 7, 8, 1000, 4099} {
		delta := make([]float32, n)
		for i := range delta {
			switch rng.IntN(5) {
			case 0:
				delta[i] = 0 // fine-tunes leave many bf16 weights unchanged
			default:
				delta[i] = float32(rng.NormFloat64() * 1e-3)
			}
		}
		e := Encode(delta)
		require.Len(t, e.Signs, PackedLen(n))
		scale, err := DecodeScale(e.Scale)
		require.NoError(t, err)

		var absSum, normSq, errSq float64
		for _, d := range delta {
			absSum += math.Abs(float64(d))
			normSq += float64(d) * float64(d)
		}
		assert.Equal(t, float32(absSum/float64(n)), scale, "scale is mean |delta|")
		for k, d := range delta {
			s := float64(scale)
			if d < 0 {
				s = -s
			}
			errSq += (float64(d) - s) * (float64(d) - s)
			bit := e.Signs[k/8]>>(k%8)&1 == 1
			assert.Equal(t, d >= 0, bit, "element %d", k)
		}
		assert.InDelta(t, math.Sqrt(normSq), e.Record.DeltaNorm, 1e-12)
		// The record and this recomputation sum the same float64 terms.
		assert.InDelta(t, math.Sqrt(errSq/normSq), e.Record.RelError, 1e-12, "n=%d", n)
		// mean|d| * sign is the L2-optimal scale for the signs, so the error
		// is below that of the zero matrix.
		assert.Less(t, e.Record.RelError, 1.0)
	}

	zero := Encode(make([]float32, 10))
	assert.Zero(t, zero.Record.RelError)
	assert.Zero(t, zero.Record.DeltaNorm)
	s, err := DecodeScale(zero.Scale)
	require.NoError(t, err)
	assert.Zero(t, s)
}

func TestApply(t *testing.T) {
	base := []float32{1, -2, 0.5, 3, 100}
	delta := []float32{0.125, -0.25, 0, -0.0625, 0.0625}
	e := Encode(delta)
	scale, err := DecodeScale(e.Scale)
	require.NoError(t, err)
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		t.Run(dt.String(), func(t *testing.T) {
			bb := make([]byte, len(base)*int(dt.Size()))
			require.NoError(t, dtype.Encode(bb, base, dt))
			got := make([]byte, len(bb))
			require.NoError(t, Apply(got, dt, bb, dt, e.Signs, e.Scale))

			wf := make([]float32, len(base))
			require.NoError(t, dtype.Decode(wf, bb, dt))
			for k := range wf {
				if delta[k] >= 0 {
					wf[k] += scale
				} else {
					wf[k] -= scale
				}
			}
			want := make([]byte, len(bb))
			require.NoError(t, dtype.Encode(want, wf, dt))
			assert.Equal(t, want, got)
		})
	}
	err = Apply(make([]byte, 10), safetensors.BF16, make([]byte, 10), safetensors.BF16, e.Signs, []byte{1})
	assert.ErrorIs(t, err, archive.ErrFormat, "short scale blob")
	err = Apply(make([]byte, 10), safetensors.I16, make([]byte, 10), safetensors.BF16, e.Signs, e.Scale)
	assert.ErrorIs(t, err, archive.ErrFormat, "integer tensor")
}
