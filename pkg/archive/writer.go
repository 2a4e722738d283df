package archive

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// Writer builds an archive at a path. Blobs are appended to a spool file in
// the target folder as they are added; Commit writes the header and the
// spooled blobs to a temporary file in the same folder and renames it over
// the target, so the target is either absent, untouched, or complete. Abort
// (or a failed Commit) removes every temporary file. A Writer is not safe for
// concurrent use.
type Writer struct {
	path  string
	spool *os.File
	buf   *bufio.Writer
	infos []stfile.Info
	names map[string]bool
	off   int64
	done  bool
}

// Create starts an archive that Commit will write to path.
func Create(path string) (*Writer, error) {
	spool, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".spool-*")
	if err != nil {
		return nil, fmt.Errorf("create archive %s: %w", path, err)
	}
	return &Writer{path: path, spool: spool, buf: bufio.NewWriterSize(spool, 1<<20), names: make(map[string]bool)}, nil
}

// Add appends a blob's stored bytes as tensor b.Tensor with the given dtype
// and shape; shape x dtype size must equal len(stored).
func (w *Writer) Add(b Blob, dt safetensors.DType, shape []uint64, stored []byte) error {
	if err := w.check(b, dt, shape, int64(len(stored))); err != nil {
		return err
	}
	if _, err := w.buf.Write(stored); err != nil {
		return fmt.Errorf("write archive spool for %s: %w", w.path, err)
	}
	w.added(b, dt, shape)
	return nil
}

// check checks that blob b, of n stored bytes, may be added as dt and shape.
func (w *Writer) check(b Blob, dt safetensors.DType, shape []uint64, n int64) error {
	if w.done {
		return errors.New("archive writer: Add after Commit or Abort")
	}
	if w.names[b.Tensor] {
		return fmt.Errorf("archive %s: blob %q added twice", w.path, b.Tensor)
	}
	size := dt.Size()
	for _, d := range shape {
		size *= d
	}
	if size != uint64(n) || n != b.Size {
		return fmt.Errorf("archive %s: blob %q: %d bytes for %s%v (record says %d)", w.path, b.Tensor, n, dt, shape, b.Size)
	}
	return nil
}

// added records blob b, whose b.Size bytes were just spooled.
func (w *Writer) added(b Blob, dt safetensors.DType, shape []uint64) {
	w.names[b.Tensor] = true
	w.infos = append(w.infos, stfile.Info{Name: b.Tensor, DType: dt, Shape: shape, Offset: w.off, Size: b.Size})
	w.off += b.Size
}

// copyChunk is how much of a blob AddFrom copies before it lets the pages
// read go: a blob may be as large as a tensor (gigabytes), and the copy's
// memory stays this size whatever the blob's.
const copyChunk = 64 << 20

// AddFrom appends blob b of the archive or part r, its stored bytes copied
// as they are with their dtype and shape in r, a chunk at a time, and
// checks their CRC-32C (an error wrapping ErrChecksum leaves the Writer
// to be aborted: the bytes are spooled by then).
func (w *Writer) AddFrom(r *Reader, b Blob) error {
	info, _ := r.file.Info(b.Tensor)
	stored, err := r.file.Data(b.Tensor)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if err := w.check(b, info.DType, info.Shape, int64(len(stored))); err != nil {
		return err
	}
	var crc uint32
	for off := 0; off < len(stored); off += copyChunk {
		p := stored[off:min(off+copyChunk, len(stored))]
		crc = crc32.Update(crc, castagnoli, p)
		if _, err := w.buf.Write(p); err != nil {
			return fmt.Errorf("write archive spool for %s: %w", w.path, err)
		}
		r.file.Release(b.Tensor) // the pages read so far; p is no longer referenced
	}
	if crc != b.CRC32C {
		w.done = true // what was spooled is not the blob: only Abort remains
		return fmt.Errorf("archive %s: %w: blob %q: crc32c %08x, manifest says %08x", r.file.Path(), ErrChecksum, b.Tensor, crc, b.CRC32C)
	}
	w.added(b, info.DType, info.Shape)
	return nil
}

// Commit writes the archive with manifest m and renames it into place. After
// Commit, successful or not, the Writer holds no temporary files.
func (w *Writer) Commit(m *Manifest) (err error) {
	if w.done {
		return errors.New("archive writer: Commit after Commit or Abort")
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, w.Abort())
		}
	}()
	blobs := make(map[string]stfile.Info, len(w.infos))
	for _, info := range w.infos {
		blobs[info.Name] = info
	}
	if err := m.validate(blobs); err != nil {
		return fmt.Errorf("archive %s: refusing to write: %w", w.path, err)
	}
	js, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("archive %s: encode manifest: %w", w.path, err)
	}
	header, err := stfile.EncodeHeader(w.infos, map[string]string{MetadataKey: string(js), MetadataCRCKey: ManifestCRC(string(js))})
	if err != nil {
		return fmt.Errorf("archive %s: encode header: %w", w.path, err)
	}
	if err := w.buf.Flush(); err != nil {
		return fmt.Errorf("write archive spool for %s: %w", w.path, err)
	}
	if _, err := w.spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("archive %s: rewind spool: %w", w.path, err)
	}
	out, err := os.CreateTemp(filepath.Dir(w.path), "."+filepath.Base(w.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create archive %s: %w", w.path, err)
	}
	tmp := out.Name()
	bw := bufio.NewWriterSize(out, 1<<20)
	werr := stfile.WriteHeader(bw, header)
	if werr == nil {
		_, werr = io.Copy(bw, w.spool)
	}
	if werr == nil {
		werr = bw.Flush()
	}
	if werr == nil {
		werr = out.Sync()
	}
	if werr == nil { // CreateTemp makes 0600 files; an archive is as shareable as any output
		werr = out.Chmod(0o644)
	}
	if cerr := out.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, w.path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write archive %s: %w", w.path, werr)
	}
	return w.Abort()
}

// Abort discards the archive being built and removes its temporary files.
// It is safe to call more than once and after Commit.
func (w *Writer) Abort() error {
	if w.spool == nil {
		w.done = true
		return nil
	}
	name := w.spool.Name()
	cerr := w.spool.Close()
	w.spool, w.done = nil, true
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if errors.Is(cerr, os.ErrClosed) {
		return nil
	}
	return cerr
}
