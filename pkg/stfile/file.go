package stfile

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"

	"github.com/nlpodyssey/safetensors"
)

// MaxHeaderSize is the largest header length, in bytes, that Parse accepts.
// It is the limit of the reference implementation (huggingface/safetensors)
// and of github.com/nlpodyssey/safetensors, so a file we accept is one they
// accept too; real headers are well under 1 MB.
const MaxHeaderSize = 100_000_000

// Sentinel errors. Errors returned by this package wrap one of them; test
// with errors.Is.
var (
	// ErrFormat reports a file that is not a well-formed safetensors file.
	ErrFormat = errors.New("malformed safetensors file")
	// ErrNotFound reports a tensor name the file does not hold.
	ErrNotFound = errors.New("no such tensor")
	// ErrClosed reports the use of a File after Close.
	ErrClosed = errors.New("file already closed")
)

// Info describes one tensor of a file.
type Info struct {
	// Name is the tensor name exactly as in the header.
	Name string
	// DType is the element type.
	DType safetensors.DType
	// Shape is the size of each dimension; an empty shape is a scalar.
	Shape []uint64
	// Offset is the tensor's first byte, relative to the start of the
	// data region (see File.DataOffset). EncodeHeader ignores it.
	Offset int64
	// Size is the tensor's length in bytes. EncodeHeader computes it from
	// DType and Shape and rejects a non-zero Size that disagrees.
	Size int64
}

// File is one opened safetensors file: a validated header plus the whole
// file's bytes, memory-mapped read-only when it came from Open.
type File struct {
	path     string
	buf      []byte // the whole file; nil once closed
	unmap    func([]byte) error
	header   []byte // private copy of the raw header JSON
	dataOff  int64  // file offset of the data region: 8 + len(header)
	size     int64  // file length in bytes
	tensors  []Info // in file (data-offset) order
	byName   map[string]int
	metadata map[string]string
}

// Open memory-maps the safetensors file at path read-only and validates it
// as Parse does. Errors name the path; a malformed file gives an error
// wrapping ErrFormat, a missing one an error wrapping fs.ErrNotExist. The
// caller must Close the File.
func Open(path string) (*File, error) {
	// Stat before opening, so that a FIFO or device is refused without
	// blocking in open.
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	fd, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// Read-only descriptor: nothing to flush, and the mapping outlives it.
	defer fd.Close()
	st, err = fd.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < 8 {
		// Also covers 0-byte files, which mmap would refuse.
		return nil, formatError(path, "file too short: %d bytes, a safetensors file has at least 8", size)
	}
	if uint64(size) > math.MaxInt {
		return nil, fmt.Errorf("%s: %d bytes is too large to map on this platform", path, size)
	}
	buf, unmap, err := mapFile(fd, int(size))
	if err != nil {
		return nil, fmt.Errorf("%s: map: %w", path, err)
	}
	f, err := Parse(path, buf)
	if err != nil {
		// The parse error is the one worth reporting.
		_ = unmap(buf)
		return nil, err
	}
	f.unmap = unmap
	return f, nil
}

// Close releases the mapping. Slices returned by Data must no longer be
// used. Close is idempotent: later calls return nil. It must not run
// concurrently with other methods.
func (f *File) Close() error {
	buf := f.buf
	f.buf = nil
	if buf == nil || f.unmap == nil {
		return nil
	}
	if err := f.unmap(buf); err != nil {
		return fmt.Errorf("%s: unmap: %w", f.path, err)
	}
	return nil
}

// Release tells the system that the named tensor's bytes are not needed for
// now, so that a long streaming pass over a large file does not keep every
// page it has read resident. The bytes stay valid: a later Data call (or a
// slice obtained earlier) reads them again from the file. Unknown names and
// Files not opened with Open are ignored.
func (f *File) Release(name string) {
	i, ok := f.byName[name]
	if !ok || f.buf == nil || f.unmap == nil {
		return
	}
	t := f.tensors[i]
	release(f.buf[f.dataOff+t.Offset : f.dataOff+t.Offset+t.Size])
}

// ReleaseRange is Release for bytes [off, off+n) of the named tensor's data
// only (the whole pages inside them), so that a pass over one large tensor
// keeps only the part it reads resident. Out-of-range bounds are clipped;
// unknown names and Files not opened with Open are ignored.
func (f *File) ReleaseRange(name string, off, n int64) {
	i, ok := f.byName[name]
	if !ok || f.buf == nil || f.unmap == nil {
		return
	}
	t := f.tensors[i]
	lo, hi := max(off, 0), min(off+n, t.Size)
	if lo >= hi {
		return
	}
	release(f.buf[f.dataOff+t.Offset+lo : f.dataOff+t.Offset+hi])
}

// Path returns the path the File was opened or parsed with.
func (f *File) Path() string { return f.path }

// Size returns the file's length in bytes.
func (f *File) Size() int64 { return f.size }

// DataOffset returns the file offset, in bytes, of the data region: 8 plus
// the header length. Info.Offset is relative to it.
func (f *File) DataOffset() int64 { return f.dataOff }

// Len returns the number of tensors.
func (f *File) Len() int { return len(f.tensors) }

// Names returns the tensor names in file order: by data offset, ties
// (zero-byte tensors) broken by their order in the header. The slice is
// the caller's.
func (f *File) Names() []string {
	names := make([]string, len(f.tensors))
	for i, t := range f.tensors {
		names[i] = t.Name
	}
	return names
}

// Info returns the description of the named tensor and whether it exists.
// The Shape slice is the caller's.
func (f *File) Info(name string) (Info, bool) {
	i, ok := f.byName[name]
	if !ok {
		return Info{}, false
	}
	info := f.tensors[i]
	info.Shape = slices.Clone(info.Shape)
	return info, true
}

// Data returns the named tensor's bytes (little-endian, Info.Size long) as
// a slice of the file's mapping, without copying. The slice is read-only:
// writing to it crashes the program. It is valid until Close, and its
// capacity ends with the tensor, so append copies. The bytes are not
// necessarily aligned to the element size. Errors wrap ErrNotFound or
// ErrClosed.
func (f *File) Data(name string) ([]byte, error) {
	i, ok := f.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	if f.buf == nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, ErrClosed)
	}
	begin := f.dataOff + f.tensors[i].Offset
	end := begin + f.tensors[i].Size
	return f.buf[begin:end:end], nil
}

// Metadata returns a copy of the header's __metadata__ map, or nil when the
// header has none.
func (f *File) Metadata() map[string]string { return maps.Clone(f.metadata) }

// Header returns a copy of the raw header JSON exactly as stored in the
// file, bytes [8, DataOffset()), trailing padding included. Writing the
// 8-byte length (WriteHeader), this header and the data region reproduces
// the file byte for byte.
func (f *File) Header() []byte { return slices.Clone(f.header) }

// formatError returns an error naming path and wrapping ErrFormat.
func formatError(path, format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
}
