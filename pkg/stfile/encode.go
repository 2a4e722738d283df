package stfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

// headerAlign is the multiple the header length is padded to with spaces,
// as the reference writer does, so that the data region starts 8-aligned.
const headerAlign = 8

// EncodeHeader returns the header JSON of a safetensors file holding
// tensors in the given order, with contiguous data offsets starting at 0:
// the caller writes WriteHeader(w, header), then each tensor's bytes in
// the same order. Each tensor's byte length is computed from DType and
// Shape (Info.Offset is ignored; a non-zero Info.Size must agree). A
// non-nil metadata map is written first as __metadata__, keys sorted.
// The result is compact JSON padded with spaces to a multiple of 8 bytes
// and is deterministic. It returns an error for a duplicate, reserved or
// non-UTF-8 name, an invalid dtype, a size disagreement or overflow, or a
// header longer than MaxHeaderSize.
func EncodeHeader(tensors []Info, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if metadata != nil {
		b.WriteString(`"` + metadataKey + `":{`)
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeJSONString(&b, k); err != nil {
				return nil, fmt.Errorf("metadata key %q: %w", k, err)
			}
			b.WriteByte(':')
			if err := writeJSONString(&b, metadata[k]); err != nil {
				return nil, fmt.Errorf("metadata key %q: %w", k, err)
			}
		}
		b.WriteByte('}')
	}
	seen := make(map[string]struct{}, len(tensors))
	var offset uint64
	for i, t := range tensors {
		if t.Name == metadataKey {
			return nil, fmt.Errorf("tensor name %q is reserved", t.Name)
		}
		if _, dup := seen[t.Name]; dup {
			return nil, fmt.Errorf("duplicate tensor name %q", t.Name)
		}
		seen[t.Name] = struct{}{}
		if _, err := t.DType.MarshalJSON(); err != nil {
			return nil, fmt.Errorf("tensor %q: invalid dtype %d", t.Name, uint8(t.DType))
		}
		size, ok := byteSize(t.DType, t.Shape)
		if !ok || size > math.MaxInt64 {
			return nil, fmt.Errorf("tensor %q: shape %v of %s overflows", t.Name, t.Shape, t.DType)
		}
		if t.Size != 0 && uint64(t.Size) != size {
			return nil, fmt.Errorf("tensor %q: Size %d disagrees with shape %v of %s (%d bytes)", t.Name, t.Size, t.Shape, t.DType, size)
		}
		end := offset + size
		if end < offset || end > math.MaxInt64 {
			return nil, fmt.Errorf("tensor %q: data offsets overflow", t.Name)
		}
		if i > 0 || metadata != nil {
			b.WriteByte(',')
		}
		if err := writeJSONString(&b, t.Name); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		b.WriteString(`:{"dtype":"` + t.DType.String() + `","shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatUint(d, 10))
		}
		b.WriteString(`],"data_offsets":[`)
		b.WriteString(strconv.FormatUint(offset, 10))
		b.WriteByte(',')
		b.WriteString(strconv.FormatUint(end, 10))
		b.WriteString(`]}`)
		offset = end
	}
	b.WriteByte('}')
	for b.Len()%headerAlign != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxHeaderSize {
		return nil, fmt.Errorf("header of %d bytes exceeds the limit of %d", b.Len(), MaxHeaderSize)
	}
	return b.Bytes(), nil
}

// WriteHeader writes the 8-byte little-endian length of header, then
// header itself (as returned by EncodeHeader or File.Header). It returns
// the first write error, or an error for a header longer than
// MaxHeaderSize.
func WriteHeader(w io.Writer, header []byte) error {
	if len(header) > MaxHeaderSize {
		return fmt.Errorf("header of %d bytes exceeds the limit of %d", len(header), MaxHeaderSize)
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err := w.Write(header)
	return err
}

// writeJSONString writes s as a JSON string the way the reference writer
// (serde_json) does: only '"', '\\' and control characters are escaped.
// Unlike encoding/json it neither HTML-escapes nor silently replaces
// invalid UTF-8.
func writeJSONString(b *bytes.Buffer, s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\f':
			b.WriteString(`\f`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return nil
}
