package quant

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refPacker packs bit by bit, straight from the package documentation: stream
// bit j is bit j%8 of byte j/8, and a code's bit k goes to stream bit p+k.
type refPacker struct {
	buf   []byte
	nBits int
}

func (p *refPacker) write(code uint8, bits int) {
	for k := range bits {
		j := p.nBits + k
		if j/8 == len(p.buf) {
			p.buf = append(p.buf, 0)
		}
		if code>>k&1 == 1 {
			p.buf[j/8] |= 1 << (j % 8)
		}
	}
	p.nBits += bits
}

func randomCodes(rng *rand.Rand, n, bits int) []uint8 {
	c := make([]uint8, n)
	for i := range c {
		c[i] = uint8(rng.UintN(1 << bits))
	}
	return c
}

func TestPackKnownBytes(t *testing.T) {
	dst := make([]byte, PackedLen(3, 3))
	Pack(dst, []uint8{5, 3, 6}, 3)
	assert.Equal(t, []byte{0x9d, 0x01}, dst) // the example in doc.go
}

func TestPackUnpackRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lengths := []int{0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 65, 1000, rng.IntN(5000)}
	for bits := 1; bits <= MaxBits; bits++ {
		for _, n := range lengths {
			codes := randomCodes(rng, n, bits)
			var ref refPacker
			for _, c := range codes {
				ref.write(c, bits)
			}
			packed := make([]byte, PackedLen(n, bits))
			require.Len(t, packed, (n*bits+7)/8)
			for i := range packed { // Pack must overwrite whatever dst held
				packed[i] = byte(rng.Uint32())
			}
			Pack(packed, codes, bits)
			if n > 0 {
				assert.Equal(t, ref.buf, packed, "bits=%d n=%d", bits, n)
			} else {
				assert.Empty(t, packed)
			}

			got := make([]uint8, n)
			require.NoError(t, Unpack(got, packed, bits))
			assert.Equal(t, codes, got, "bits=%d n=%d", bits, n)
		}
	}
}

func TestPackMasksHighBits(t *testing.T) {
	dst := make([]byte, PackedLen(4, 2))
	Pack(dst, []uint8{0xff, 0x00, 0xfd, 0x02}, 2)
	assert.Equal(t, []byte{0b10_01_00_11}, dst)
}

func TestPackOverwritesDst(t *testing.T) {
	dst := []byte{0xff, 0xff, 0xff}
	Pack(dst, []uint8{1, 0, 1}, 3) // 9 bits: bytes 0 and 1 rewritten, byte 2 untouched
	assert.Equal(t, []byte{0b00_000_001 | 1<<6, 0x00, 0xff}, dst)
}

func TestUnpackShort(t *testing.T) {
	for bits := 1; bits <= MaxBits; bits++ {
		n := 17
		src := make([]byte, PackedLen(n, bits)-1)
		err := Unpack(make([]uint8, n), src, bits)
		assert.ErrorIs(t, err, ErrShortStream, "bits=%d", bits)
	}
}

// segment is a run of codes of one width in a mixed-width stream.
type segment struct {
	bits  int
	codes []uint8
}

func TestBitWriterReaderMixedWidths(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 50 {
		var segs []segment
		for range 1 + rng.IntN(12) {
			bits := 1 + rng.IntN(MaxBits)
			n := []int{0, 1, 2, 5, rng.IntN(300)}[rng.IntN(5)]
			segs = append(segs, segment{bits, randomCodes(rng, n, bits)})
		}

		prefix := []byte{0xaa, 0x55}
		// Reuse a buffer whose spare capacity holds stale bytes on odd trials.
		buf := make([]byte, 2, 4+trial%2*4096)
		for i := range buf[:cap(buf)] {
			buf[:cap(buf)][i] = 0xff
		}
		copy(buf, prefix)
		var w BitWriter
		w.Reset(buf)
		var ref refPacker
		total := 0
		for i, s := range segs {
			if i%2 == 0 {
				w.WriteCodes(s.codes, s.bits)
			} else {
				for _, c := range s.codes {
					w.Write(c, s.bits)
				}
			}
			for _, c := range s.codes {
				ref.write(c, s.bits)
			}
			total += len(s.codes) * s.bits
		}
		require.Equal(t, total, w.Bits())
		out := w.Bytes()
		require.Equal(t, prefix, out[:2], "trial %d: prefix kept", trial)
		stream := out[2:]
		require.Len(t, stream, (total+7)/8, "trial %d", trial)
		if total > 0 {
			require.Equal(t, ref.buf, stream, "trial %d", trial)
		}

		var r BitReader
		r.Reset(stream)
		for i, s := range segs {
			got := make([]uint8, len(s.codes))
			if i%3 == 1 {
				for j := range got {
					c, err := r.Read(s.bits)
					require.NoError(t, err)
					got[j] = c
				}
			} else {
				require.NoError(t, r.ReadCodes(got, s.bits))
			}
			require.Equal(t, s.codes, got, "trial %d segment %d (%d bits)", trial, i, s.bits)
		}
		assert.Equal(t, total, r.Offset())
		assert.Less(t, r.Remaining(), 8, "only padding left")
	}
}

// TestEveryOffsetAndWidth writes k codes of width b1 (reaching every bit
// offset 0..7 for some k) and then codes of width b2 long enough for the
// 8-code fast paths, for every pair of widths.
func TestEveryOffsetAndWidth(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for b1 := 1; b1 <= MaxBits; b1++ {
		for k := range 8 {
			for b2 := 1; b2 <= MaxBits; b2++ {
				head, body := randomCodes(rng, k, b1), randomCodes(rng, 41, b2)
				var w BitWriter
				w.WriteCodes(head, b1)
				w.WriteCodes(body, b2)
				var ref refPacker
				for _, c := range head {
					ref.write(c, b1)
				}
				for _, c := range body {
					ref.write(c, b2)
				}
				require.Equal(t, ref.buf, w.Bytes(), "b1=%d k=%d b2=%d", b1, k, b2)

				var r BitReader
				r.Reset(w.Bytes())
				gotHead, gotBody := make([]uint8, k), make([]uint8, len(body))
				require.NoError(t, r.ReadCodes(gotHead, b1))
				require.NoError(t, r.ReadCodes(gotBody, b2))
				require.Equal(t, head, gotHead)
				require.Equal(t, body, gotBody, "b1=%d k=%d b2=%d", b1, k, b2)
			}
		}
	}
}

func TestBitReaderPastEnd(t *testing.T) {
	var w BitWriter
	w.WriteCodes([]uint8{1, 2, 3}, 3) // 9 bits: 2 bytes, 7 padding bits
	var r BitReader
	r.Reset(w.Bytes())

	_, err := r.Read(8)
	require.NoError(t, err)
	require.NoError(t, r.ReadCodes(make([]uint8, 7), 1))
	assert.Equal(t, 1, r.Remaining())

	err = r.ReadCodes(make([]uint8, 1), 2)
	require.ErrorIs(t, err, ErrShortStream)
	assert.Equal(t, 15, r.Offset(), "a failed read consumes nothing")
	_, err = r.Read(1)
	require.NoError(t, err)
	_, err = r.Read(1)
	assert.ErrorIs(t, err, ErrShortStream)

	var empty BitReader
	_, err = empty.Read(1)
	assert.ErrorIs(t, err, ErrShortStream)
	assert.NoError(t, empty.ReadCodes(nil, 5), "reading zero codes never fails")
}

func TestBitReaderSeek(t *testing.T) {
	var w BitWriter
	w.WriteCodes([]uint8{5, 6, 7}, 3)
	w.WriteCodes([]uint8{1, 0, 1, 1}, 1)
	var r BitReader
	r.Reset(w.Bytes())
	r.Seek(9) // the 1-bit codes, read before the 3-bit ones
	got := make([]uint8, 4)
	require.NoError(t, r.ReadCodes(got, 1))
	assert.Equal(t, []uint8{1, 0, 1, 1}, got)
	r.Seek(3)
	require.NoError(t, r.ReadCodes(got[:2], 3))
	assert.Equal(t, []uint8{6, 7}, got[:2])
	r.Seek(14)
	assert.ErrorIs(t, r.ReadCodes(got[:2], 3), ErrShortStream, "past the end")
}

func TestBitWidthPanics(t *testing.T) {
	for _, bits := range []int{0, -1, 9} {
		assert.Panics(t, func() { PackedLen(1, bits) }, "bits=%d", bits)
		assert.Panics(t, func() { Pack(make([]byte, 8), []uint8{1}, bits) }, "bits=%d", bits)
		assert.Panics(t, func() { var w BitWriter; w.Write(0, bits) }, "bits=%d", bits)
		assert.Panics(t, func() { var r BitReader; _, _ = r.Read(bits) }, "bits=%d", bits)
	}
	assert.Panics(t, func() { Pack(make([]byte, 1), []uint8{1, 2, 3}, 3) }, "dst too short")
}

func BenchmarkPack(b *testing.B) {
	for _, bits := range []int{2, 3, 8} {
		b.Run(bitsName(bits), func(b *testing.B) {
			codes := randomCodes(rand.New(rand.NewPCG(5, 6)), 1<<16, bits)
			dst := make([]byte, PackedLen(len(codes), bits))
			b.SetBytes(int64(len(codes)))
			for b.Loop() {
				Pack(dst, codes, bits)
			}
		})
	}
}

func BenchmarkUnpack(b *testing.B) {
	for _, bits := range []int{2, 3, 8} {
		b.Run(bitsName(bits), func(b *testing.B) {
			codes := randomCodes(rand.New(rand.NewPCG(5, 6)), 1<<16, bits)
			src := make([]byte, PackedLen(len(codes), bits))
			Pack(src, codes, bits)
			b.SetBytes(int64(len(codes)))
			for b.Loop() {
				if err := Unpack(codes, src, bits); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
