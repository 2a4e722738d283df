package bitdelta

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/pkg/archive"
)

// ScaleBytes is the size of the stored scale: one little-endian float32.
// float32 rather than fp16/bf16 because a matrix's mean |Delta| can be below
// fp16's normal range, and the 4 bytes are negligible beside the signs.
const ScaleBytes = 4

// Encoded is the result of Encode: the blobs and the manifest record.
type Encoded struct {
	// Signs holds PackedLen(n) bytes: bit k%8 of byte k/8 is 1 when
	// element k of the delta is >= 0, 0 when it is < 0; padding bits are 0.
	Signs []byte
	// Scale holds the scale as a little-endian float32 (ScaleBytes bytes).
	Scale  []byte
	Record archive.BitDelta
}

// PackedLen returns the number of bytes holding n sign bits: ceil(n / 8).
func PackedLen(n int) int { return (n + 7) / 8 }

// Cost returns the bytes stored for a delta of n elements: the packed signs
// and the scale. It does not depend on any ratio.
func Cost(n int) int64 { return int64(PackedLen(n)) + ScaleBytes }

// Pack writes the sign bits of delta into dst (PackedLen(len(delta))
// bytes): bit k%8 of byte k/8 is 1 when delta[k] >= 0. Negative zero counts
// as >= 0, as the float comparison says. It panics if dst has another
// length.
func Pack(dst []byte, delta []float32) {
	if len(dst) != PackedLen(len(delta)) {
		panic(fmt.Sprintf("bitdelta: %d bytes for %d signs", len(dst), len(delta)))
	}
	clear(dst)
	for k, d := range delta {
		if d >= 0 {
			dst[k/8] |= 1 << (k % 8)
		}
	}
}

// Unpack writes +scale or -scale into each element of dst from the sign
// bits in signs. It returns an error wrapping archive.ErrFormat when signs
// is not PackedLen(len(dst)) bytes long or its padding bits are not zero.
func Unpack(dst []float32, signs []byte, scale float32) error {
	if len(signs) != PackedLen(len(dst)) {
		return fmt.Errorf("%w: %d bytes of signs for %d elements, want %d", archive.ErrFormat, len(signs), len(dst), PackedLen(len(dst)))
	}
	if r := len(dst) % 8; r != 0 && signs[len(signs)-1]>>r != 0 {
		return fmt.Errorf("%w: nonzero padding bits after the last sign", archive.ErrFormat)
	}
	for k := range dst {
		if signs[k/8]&(1<<(k%8)) != 0 {
			dst[k] = scale
		} else {
			dst[k] = -scale
		}
	}
	return nil
}

// Encode stores delta (any layout; finite values) as its signs and
// scale = mean |delta|, computed in float64 and rounded to float32, and
// records the relative error of what Decode gives back. An all-zero delta
// gets scale 0 and error 0.
func Encode(delta []float32) *Encoded {
	var absSum, normSq float64
	for _, d := range delta {
		absSum += math.Abs(float64(d))
		normSq += float64(d) * float64(d)
	}
	var scale float32
	if len(delta) > 0 {
		scale = float32(absSum / float64(len(delta)))
	}
	e := &Encoded{Signs: make([]byte, PackedLen(len(delta))), Record: archive.BitDelta{DeltaNorm: math.Sqrt(normSq)}}
	Pack(e.Signs, delta)
	e.Scale = binary.LittleEndian.AppendUint32(nil, math.Float32bits(scale))

	hat := make([]float32, len(delta))
	if err := Unpack(hat, e.Signs, scale); err != nil {
		panic(fmt.Sprintf("bitdelta: decoding what was just encoded: %v", err))
	}
	if normSq > 0 {
		var errSq float64
		for k, d := range delta {
			r := float64(d) - float64(hat[k])
			errSq += r * r
		}
		e.Record.RelError = math.Sqrt(errSq / normSq)
	}
	return e
}

// DecodeScale reads the scale blob. It returns an error wrapping
// archive.ErrFormat unless it is ScaleBytes long and holds a finite,
// non-negative float32.
func DecodeScale(b []byte) (float32, error) {
	if len(b) != ScaleBytes {
		return 0, fmt.Errorf("%w: scale blob has %d bytes, want %d", archive.ErrFormat, len(b), ScaleBytes)
	}
	s := math.Float32frombits(binary.LittleEndian.Uint32(b))
	if !(s >= 0) || math.IsInf(float64(s), 0) {
		return 0, fmt.Errorf("%w: scale is %v", archive.ErrFormat, s)
	}
	return s, nil
}

// Apply writes base + scale * sign into dst, computed in float32 and
// encoded as dt (round to nearest, ties to even). base holds n elements of
// baseDT and dst n elements of dt, n = the number of elements of the tensor.
// Malformed blobs give errors wrapping archive.ErrFormat.
func Apply(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, signs, scaleBlob []byte) error {
	if !dtype.IsFloat(dt) || !dtype.IsFloat(baseDT) {
		return fmt.Errorf("%w: bitdelta tensor of dtype %s over a base of %s", archive.ErrFormat, dt, baseDT)
	}
	n := len(dst) / int(dt.Size())
	scale, err := DecodeScale(scaleBlob)
	if err != nil {
		return err
	}
	hat := make([]float32, n)
	if err := Unpack(hat, signs, scale); err != nil {
		return err
	}
	w := make([]float32, n)
	if err := dtype.Decode(w, base, baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	for i := range w {
		w[i] += hat[i]
	}
	return dtype.Encode(dst, w, dt)
}
