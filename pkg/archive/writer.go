package archive

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
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
	if w.done {
		return errors.New("archive writer: Add after Commit or Abort")
	}
	if w.names[b.Tensor] {
		return fmt.Errorf("archive %s: blob %q added twice", w.path, b.Tensor)
	}
	n := dt.Size()
	for _, d := range shape {
		n *= d
	}
	if n != uint64(len(stored)) || int64(len(stored)) != b.Size {
		return fmt.Errorf("archive %s: blob %q: %d bytes for %s%v (record says %d)", w.path, b.Tensor, len(stored), dt, shape, b.Size)
	}
	if _, err := w.buf.Write(stored); err != nil {
		return fmt.Errorf("write archive spool for %s: %w", w.path, err)
	}
	w.names[b.Tensor] = true
	w.infos = append(w.infos, stfile.Info{Name: b.Tensor, DType: dt, Shape: shape, Offset: w.off, Size: int64(len(stored))})
	w.off += int64(len(stored))
	return nil
}

// AddFrom appends blob b of the archive or part r, its stored bytes copied
// as they are (their checksum verified) with their dtype and shape, and
// releases them from r's mapping.
func (w *Writer) AddFrom(r *Reader, b Blob) error {
	stored, info, err := r.Stored(b)
	if err != nil {
		return err
	}
	err = w.Add(b, info.DType, info.Shape, stored)
	r.Release(b)
	return err
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
