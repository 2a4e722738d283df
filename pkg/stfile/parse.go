package stfile

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/nlpodyssey/safetensors"
)

// metadataKey is the reserved header key holding string metadata.
const metadataKey = "__metadata__"

// entry is one tensor as read from the header, before validation.
type entry struct {
	name       string
	dtype      safetensors.DType
	shape      []uint64
	begin, end uint64
	pos        int // position in the header, to order zero-byte tensors
}

// notHeader says why the start of buf, whose first 8 bytes read as the
// header length n, is no safetensors header, quoting its first bytes when
// they are text (a JSON or text file given by mistake).
func notHeader(buf []byte, n uint64) string {
	var why string
	switch {
	case n > MaxHeaderSize:
		why = fmt.Sprintf("its first 8 bytes, read as the header length, give %d, above the limit of %d", n, MaxHeaderSize)
	case n > uint64(len(buf)-8):
		why = fmt.Sprintf("its first 8 bytes, read as the header length, give %d, past the end of the file (%d bytes)", n, len(buf))
	default:
		why = "its header does not start with '{': it is not JSON"
	}
	head := buf[:min(len(buf), 24)]
	if utf8.Valid(head) && !slices.ContainsFunc([]rune(string(head)), func(r rune) bool { return r < ' ' && r != '\n' && r != '\t' && r != '\r' }) {
		why += fmt.Sprintf("; it starts with the text %q", head)
	}
	return why + " (a safetensors file starts with an 8-byte little-endian header length, then a JSON header)"
}

// Parse validates buf, the whole content of a safetensors file, and returns
// a File over it without copying tensor data: buf must stay unchanged while
// the File is used. path only names the file in errors and in Path. Errors
// wrap ErrFormat. Close on the result releases nothing but makes Data fail.
func Parse(path string, buf []byte) (*File, error) {
	if len(buf) < 8 {
		return nil, formatError(path, "file too short: %d bytes, a safetensors file has at least 8", len(buf))
	}
	// Check the length before touching the header, so that a hostile length
	// costs nothing.
	n := binary.LittleEndian.Uint64(buf[:8])
	if n > MaxHeaderSize || n > uint64(len(buf)-8) || !bytes.HasPrefix(bytes.TrimLeft(buf[8:8+n], " \t\r\n"), []byte("{")) {
		return nil, formatError(path, "not a safetensors file: %s", notHeader(buf, n))
	}
	header := buf[8 : 8+n]
	entries, metadata, err := parseHeader(header)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: header: %w", path, ErrFormat, err)
	}
	dataLen := uint64(len(buf)) - 8 - n
	if err := checkLayout(entries, dataLen); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrFormat, err)
	}

	f := &File{
		path:     path,
		buf:      buf,
		header:   slices.Clone(header),
		dataOff:  int64(8 + n),
		size:     int64(len(buf)),
		tensors:  make([]Info, len(entries)),
		byName:   make(map[string]int, len(entries)),
		metadata: metadata,
	}
	for i, e := range entries {
		// checkLayout bounded every offset by dataLen, so they fit int64.
		f.tensors[i] = Info{
			Name:   e.name,
			DType:  e.dtype,
			Shape:  e.shape,
			Offset: int64(e.begin),
			Size:   int64(e.end - e.begin),
		}
		f.byName[e.name] = i
	}
	if err := f.crossCheck(); err != nil {
		return nil, err
	}
	return f, nil
}

// crossCheck runs the safetensors library over the same bytes and requires
// it to agree with our reading, so that any file we accept is one the
// library (and thus its users) reads the same way.
func (f *File) crossCheck() error {
	st, err := safetensors.Deserialize(f.buf)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", f.path, ErrFormat, err)
	}
	if st.Len() != len(f.tensors) {
		return formatError(f.path, "safetensors library reads %d tensors, we read %d", st.Len(), len(f.tensors))
	}
	for _, t := range f.tensors {
		view, ok := st.Tensor(t.Name)
		if !ok || view.DType() != t.DType || !slices.Equal(view.Shape(), t.Shape) ||
			int64(len(view.Data())) != t.Size {
			return formatError(f.path, "tensor %q: safetensors library reads it differently", t.Name)
		}
	}
	return nil
}

// checkLayout sorts entries into file order and checks that they tile
// [0, dataLen) exactly, each holding shape x dtype-size bytes.
func checkLayout(entries []entry, dataLen uint64) error {
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.begin, b.begin), cmp.Compare(a.end, b.end), cmp.Compare(a.pos, b.pos))
	})
	var pos uint64
	for _, e := range entries {
		switch {
		case e.end < e.begin:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run backwards", e.name, e.begin, e.end)
		case e.begin < pos:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap the previous tensor, which ends at %d", e.name, e.begin, e.end, pos)
		case e.begin > pos:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] leave a gap after offset %d", e.name, e.begin, e.end, pos)
		case e.end > dataLen:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run past the end of the data region (%d bytes)", e.name, e.begin, e.end, dataLen)
		}
		size, ok := byteSize(e.dtype, e.shape)
		if !ok {
			return fmt.Errorf("tensor %q: shape %v of %s overflows", e.name, e.shape, e.dtype)
		}
		if size != e.end-e.begin {
			return fmt.Errorf("tensor %q: shape %v of %s needs %d bytes, data_offsets [%d, %d] hold %d", e.name, e.shape, e.dtype, size, e.begin, e.end, e.end-e.begin)
		}
		pos = e.end
	}
	if pos != dataLen {
		return fmt.Errorf("tensors cover %d bytes but the data region holds %d: data does not end at end of file", pos, dataLen)
	}
	return nil
}

// byteSize returns the byte length of a tensor, false on overflow. An
// empty shape is a scalar of one element.
func byteSize(dt safetensors.DType, shape []uint64) (uint64, bool) {
	n := dt.Size()
	for _, d := range shape {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 {
			return 0, false
		}
		n = lo
	}
	return n, true
}

// parseHeader walks the header JSON token by token, so that duplicate keys,
// which encoding/json silently merges, are seen. It returns the tensors in
// header order and the __metadata__ map (nil when absent or null).
func parseHeader(header []byte) ([]entry, map[string]string, error) {
	if !utf8.Valid(header) {
		// encoding/json would silently replace invalid bytes in names.
		return nil, nil, errors.New("not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, fmt.Errorf("not a JSON object: %w", err)
	}
	var (
		entries  []entry
		metadata map[string]string
		seen     = make(map[string]struct{})
	)
	for dec.More() {
		key, err := readString(dec)
		if err != nil {
			return nil, nil, err
		}
		if _, dup := seen[key]; dup {
			if key == metadataKey {
				return nil, nil, fmt.Errorf("duplicate %s", metadataKey)
			}
			return nil, nil, fmt.Errorf("duplicate tensor name %q", key)
		}
		seen[key] = struct{}{}
		if key == metadataKey {
			if metadata, err = readMetadata(dec); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", metadataKey, err)
			}
			continue
		}
		e, err := readEntry(dec)
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", key, err)
		}
		e.name, e.pos = key, len(entries)
		entries = append(entries, e)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return nil, nil, fmt.Errorf("after the JSON object: %w", err)
		}
		return nil, nil, fmt.Errorf("unexpected %s after the JSON object", describe(tok))
	}
	return entries, metadata, nil
}

// readEntry reads {"dtype": ..., "shape": [...], "data_offsets": [b, e]}.
func readEntry(dec *json.Decoder) (entry, error) {
	var (
		e    entry
		seen = make(map[string]bool, 3)
	)
	if err := expectDelim(dec, '{'); err != nil {
		return e, fmt.Errorf("want an object: %w", err)
	}
	for dec.More() {
		key, err := readString(dec)
		if err != nil {
			return e, err
		}
		if seen[key] {
			return e, fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "dtype":
			s, err := readString(dec)
			if err != nil {
				return e, fmt.Errorf("dtype: %w", err)
			}
			if e.dtype, err = safetensors.ParseDType(s); err != nil {
				return e, fmt.Errorf("unknown dtype %q", s)
			}
		case "shape":
			if e.shape, err = readUints(dec, -1); err != nil {
				return e, fmt.Errorf("shape: %w", err)
			}
			if e.shape == nil {
				e.shape = []uint64{}
			}
		case "data_offsets":
			offs, err := readUints(dec, 2)
			if err != nil {
				return e, fmt.Errorf("data_offsets: %w", err)
			}
			e.begin, e.end = offs[0], offs[1]
		default:
			return e, fmt.Errorf("unknown key %q", key)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return e, err
	}
	for _, k := range []string{"dtype", "shape", "data_offsets"} {
		if !seen[k] {
			return e, fmt.Errorf("missing %q", k)
		}
	}
	return e, nil
}

// readUints reads an array of non-negative integers; want >= 0 requires
// exactly that many.
func readUints(dec *json.Decoder, want int) ([]uint64, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, fmt.Errorf("want an array: %w", err)
	}
	var out []uint64
	for dec.More() {
		tok, err := nextToken(dec)
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("want a number, got %s", describe(tok))
		}
		v, err := strconv.ParseUint(num.String(), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("want a non-negative integer, got %s", num)
		}
		if want >= 0 && len(out) == want {
			return nil, fmt.Errorf("want %d numbers, got more", want)
		}
		out = append(out, v)
	}
	if err := expectDelim(dec, ']'); err != nil {
		return nil, err
	}
	if want >= 0 && len(out) != want {
		return nil, fmt.Errorf("want %d numbers, got %d", want, len(out))
	}
	return out, nil
}

// readMetadata reads a string -> string object, or null (nil map).
func readMetadata(dec *json.Decoder) (map[string]string, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %s", describe(tok))
	}
	md := make(map[string]string)
	for dec.More() {
		key, err := readString(dec)
		if err != nil {
			return nil, err
		}
		if _, dup := md[key]; dup {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		val, err := readString(dec)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
		md[key] = val
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return md, nil
}

func readString(dec *json.Decoder) (string, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("want a string, got %s", describe(tok))
	}
	return s, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := nextToken(dec)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %s, got %s", describe(want), describe(tok))
	}
	return nil
}

// nextToken is dec.Token with the end of input inside a value reported as
// io.ErrUnexpectedEOF.
func nextToken(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return tok, err
}

// describe renders a JSON token for an error message.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(v)
	case json.Delim:
		return "'" + v.String() + "'"
	default:
		return fmt.Sprint(v)
	}
}

// ParseHeader parses and validates a header on its own (the JSON between the
// length prefix and the data) and returns its tensors in file order and its
// __metadata__. The tensors must tile a data region exactly, with no gaps or
// overlaps; the region's length is their total size. Errors wrap ErrFormat.
func ParseHeader(header []byte) ([]Info, map[string]string, error) {
	entries, metadata, err := parseHeader(header)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: header: %w", ErrFormat, err)
	}
	var end uint64
	for _, e := range entries {
		end = max(end, e.end)
	}
	if err := checkLayout(entries, end); err != nil {
		return nil, nil, fmt.Errorf("%w: header: %w", ErrFormat, err)
	}
	infos := make([]Info, len(entries))
	for i, e := range entries {
		infos[i] = Info{Name: e.name, DType: e.dtype, Shape: e.shape, Offset: int64(e.begin), Size: int64(e.end - e.begin)}
	}
	return infos, metadata, nil
}
