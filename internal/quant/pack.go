package quant

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// ErrShortStream is returned (wrapped) when packed codes are read past the end
// of their byte stream.
var ErrShortStream = errors.New("read past end of packed codes")

// PackedLen returns the number of bytes holding nCodes codes of bits bits
// packed densely: ceil(nCodes*bits/8). It panics if nCodes < 0 or bits is
// outside 1..MaxBits.
func PackedLen(nCodes, bits int) int {
	checkBits(bits)
	if nCodes < 0 {
		panic(fmt.Sprintf("quant: PackedLen: negative code count %d", nCodes))
	}
	return (nCodes*bits + 7) / 8
}

// Pack writes codes, bits bits each, densely into dst[:PackedLen(len(codes),
// bits)] in the bit order of the package documentation; the unused high bits
// of the last byte are zero. Only the low bits bits of each code are kept. It
// panics if bits is outside 1..MaxBits or dst is shorter than PackedLen.
func Pack(dst []byte, codes []uint8, bits int) {
	n := PackedLen(len(codes), bits)
	if len(dst) < n {
		panic(fmt.Sprintf("quant: Pack: %d codes of %d bits need %d bytes, have %d", len(codes), bits, n, len(dst)))
	}
	packAt(dst[:n], 0, codes, bits)
}

// Unpack reads len(dst) codes of bits bits from the start of src, packed as
// by Pack. It returns an error wrapping ErrShortStream, leaving dst
// unchanged, if src is shorter than PackedLen(len(dst), bits); extra bytes
// are ignored. It panics if bits is outside 1..MaxBits.
func Unpack(dst []uint8, src []byte, bits int) error {
	if n := PackedLen(len(dst), bits); len(src) < n {
		return fmt.Errorf("unpack %d codes of %d bits from %d bytes, need %d: %w", len(dst), bits, len(src), n, ErrShortStream)
	}
	unpackAt(dst, src, 0, bits)
	return nil
}

// packAt writes codes into dst starting at bit bitOff (0..7) of dst[0],
// keeping the bitOff low bits of dst[0] and overwriting every later bit of
// dst up to the end of the last byte written, with zeros above the last code.
// dst must hold ceil((bitOff + len(codes)*bits) / 8) bytes, all of which are
// the stream's: the fast path writes 8 bytes at a time, zero past the data.
func packAt(dst []byte, bitOff int, codes []uint8, bits int) {
	mask := uint8(1)<<bits - 1
	if bits == 8 && bitOff == 0 {
		copy(dst, codes)
		return
	}
	p, j := bitOff, 0 // bit position in dst, index in codes
	if bits < 8 {
		// Eight codes fill 8*bits <= 56 bits: one 64-bit store, shifted by
		// at most 7, holds them.
		for ; j+8 <= len(codes) && p/8+8 <= len(dst); j += 8 {
			c := codes[j : j+8 : j+8]
			v := uint64(c[0]&mask) | uint64(c[1]&mask)<<bits |
				uint64(c[2]&mask)<<(2*bits) | uint64(c[3]&mask)<<(3*bits) |
				uint64(c[4]&mask)<<(4*bits) | uint64(c[5]&mask)<<(5*bits) |
				uint64(c[6]&mask)<<(6*bits) | uint64(c[7]&mask)<<(7*bits)
			i, off := p/8, p&7
			keep := uint64(dst[i]) & (1<<off - 1)
			binary.LittleEndian.PutUint64(dst[i:], keep|v<<off)
			p += 8 * bits
		}
	}
	for _, c := range codes[j:] {
		i, off := p/8, p&7
		w := uint16(c&mask) << off
		dst[i] = dst[i]&(1<<off-1) | byte(w)
		if off+bits > 8 {
			dst[i+1] = byte(w >> 8)
		}
		p += bits
	}
}

// unpackAt reads len(dst) codes from src starting at bit bitOff (0..7) of
// src[0]. src must hold ceil((bitOff + len(dst)*bits) / 8) bytes; the fast
// path reads up to 8 bytes at a time where src has them.
func unpackAt(dst []uint8, src []byte, bitOff int, bits int) {
	mask := uint8(1)<<bits - 1
	if bits == 8 && bitOff == 0 {
		copy(dst, src)
		return
	}
	p, j := bitOff, 0 // bit position in src, index in dst
	if bits < 8 {
		// A 64-bit load shifted right by at most 7 keeps 57 bits, enough for
		// eight codes of up to 7 bits.
		for ; j+8 <= len(dst) && p/8+8 <= len(src); j += 8 {
			v := binary.LittleEndian.Uint64(src[p/8:]) >> (p & 7)
			d := dst[j : j+8 : j+8]
			d[0] = uint8(v) & mask
			d[1] = uint8(v>>bits) & mask
			d[2] = uint8(v>>(2*bits)) & mask
			d[3] = uint8(v>>(3*bits)) & mask
			d[4] = uint8(v>>(4*bits)) & mask
			d[5] = uint8(v>>(5*bits)) & mask
			d[6] = uint8(v>>(6*bits)) & mask
			d[7] = uint8(v>>(7*bits)) & mask
			p += 8 * bits
		}
	}
	for ; j < len(dst); j++ {
		i, off := p/8, p&7
		w := uint16(src[i])
		if off+bits > 8 {
			w |= uint16(src[i+1]) << 8
		}
		dst[j] = uint8(w>>off) & mask
		p += bits
	}
}

// BitWriter appends codes of any width 1..MaxBits to a byte slice, densely
// and back to back, in the bit order of the package documentation: a stream
// may hold vectors of different widths with no padding between them. The zero
// value is an empty writer appending to a nil slice.
type BitWriter struct {
	buf   []byte
	start int // len(buf) at Reset: the stream begins at buf[start]
	nBits int // bits written since Reset
}

// Reset makes w append a new stream to buf, after its current contents,
// reusing buf's capacity. The stream starts byte-aligned at buf[len(buf)].
func (w *BitWriter) Reset(buf []byte) {
	w.buf, w.start, w.nBits = buf, len(buf), 0
}

// Write appends one code of bits bits; only its low bits bits are kept. It
// panics if bits is outside 1..MaxBits.
func (w *BitWriter) Write(code uint8, bits int) {
	checkBits(bits)
	off := w.nBits & 7
	if off == 0 {
		w.buf = append(w.buf, 0)
	}
	// The last byte's bits from off up are zero: packAt and this function
	// leave zeros above the last code.
	v := uint16(code&(1<<bits-1)) << off
	w.buf[len(w.buf)-1] |= byte(v)
	if off+bits > 8 {
		w.buf = append(w.buf, byte(v>>8))
	}
	w.nBits += bits
}

// WriteCodes appends codes, bits bits each; only the low bits bits of each
// code are kept. It panics if bits is outside 1..MaxBits.
func (w *BitWriter) WriteCodes(codes []uint8, bits int) {
	checkBits(bits)
	off := w.nBits & 7
	first := w.start + w.nBits/8 // byte holding the next bit
	end := w.start + (w.nBits+len(codes)*bits+7)/8
	// The new bytes may hold stale data from buf's capacity: packAt
	// overwrites all of them.
	w.buf = slices.Grow(w.buf, end-len(w.buf))[:end]
	packAt(w.buf[first:end], off, codes, bits)
	w.nBits += len(codes) * bits
}

// Bits returns the number of bits written since Reset.
func (w *BitWriter) Bits() int { return w.nBits }

// Bytes returns the buffer given to Reset followed by the stream, whose last
// byte is padded with zero high bits: len(Bytes()) - (length at Reset) is
// ceil(Bits()/8). The slice aliases w's buffer and is valid until the next
// Write, WriteCodes or Reset.
func (w *BitWriter) Bytes() []byte { return w.buf }

// BitReader reads codes of any width 1..MaxBits back from a stream written
// by BitWriter or Pack. The zero value is a reader of an empty stream.
type BitReader struct {
	src []byte
	pos int // bits consumed
}

// Reset makes r read the stream starting at src[0], bit 0.
func (r *BitReader) Reset(src []byte) {
	r.src, r.pos = src, 0
}

// Seek makes r read its stream from bit pos (≥ 0); a position past the end
// is not checked here: the next read fails as usual.
func (r *BitReader) Seek(pos int) { r.pos = pos }

// Offset returns the number of bits consumed since Reset.
func (r *BitReader) Offset() int { return r.pos }

// Remaining returns the number of bits left in the stream, padding included.
func (r *BitReader) Remaining() int { return len(r.src)*8 - r.pos }

// Read reads one code of bits bits. It returns an error wrapping
// ErrShortStream, consuming nothing, if fewer than bits bits remain. It
// panics if bits is outside 1..MaxBits.
func (r *BitReader) Read(bits int) (uint8, error) {
	checkBits(bits)
	if bits > r.Remaining() {
		return 0, fmt.Errorf("read a code of %d bits at bit %d of %d: %w", bits, r.pos, len(r.src)*8, ErrShortStream)
	}
	i, off := r.pos/8, r.pos&7
	v := uint16(r.src[i])
	if off+bits > 8 {
		v |= uint16(r.src[i+1]) << 8
	}
	r.pos += bits
	return uint8(v>>off) & (1<<bits - 1), nil
}

// ReadCodes fills dst with codes of bits bits. It returns an error wrapping
// ErrShortStream, consuming nothing and leaving dst unchanged, if fewer
// than len(dst)*bits bits remain. It panics if bits is outside 1..MaxBits.
func (r *BitReader) ReadCodes(dst []uint8, bits int) error {
	checkBits(bits)
	need := len(dst) * bits
	if need > r.Remaining() {
		return fmt.Errorf("read %d codes of %d bits at bit %d of %d: %w", len(dst), bits, r.pos, len(r.src)*8, ErrShortStream)
	}
	first := r.pos / 8
	unpackAt(dst, r.src[first:], r.pos&7, bits)
	r.pos += need
	return nil
}
