package archive

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// Reader is an opened archive. Its Manifest has been validated against the
// file: every blob it names exists with the recorded size.
type Reader struct {
	// Manifest is the archive's manifest; callers must not modify it.
	Manifest *Manifest
	file     *stfile.File
}

// Open opens and validates the archive at path. Errors wrap ErrFormat,
// ErrVersion, or the stfile package's errors for a broken safetensors file;
// a valid part file is refused with a *PartError (ErrPart).
func Open(path string) (*Reader, error) {
	f, err := stfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return open(f, false)
}

// OpenPart opens and validates the part file at path (docs/FORMAT.md
// section 7), as Open does an archive; an archive is refused (ErrFormat).
func OpenPart(path string) (*Reader, error) {
	f, err := stfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return open(f, true)
}

// Parse validates buf, the whole content of an archive file, as Open does;
// name stands for the file in errors. The Reader aliases buf, which must not
// change while the Reader is in use; Close releases nothing.
func Parse(name string, buf []byte) (*Reader, error) {
	f, err := stfile.Parse(name, buf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return open(f, false)
}

// open reads and validates f's manifest and requires a part file when
// part is true, an archive otherwise. On error it closes f.
func open(f *stfile.File, part bool) (*Reader, error) {
	m, err := readManifest(f)
	switch {
	case err != nil:
		err = fmt.Errorf("archive %s: %w", f.Path(), err)
	case m.Part != nil && !part:
		err = &PartError{Path: f.Path(), Index: m.Part.Index, Count: m.Part.Count}
	case m.Part == nil && part:
		err = fmt.Errorf("%w: %s is an archive, not a part file", ErrFormat, f.Path())
	}
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return &Reader{Manifest: m, file: f}, nil
}

// PartError reports a valid part file where a whole archive is expected.
// It matches ErrPart and ErrFormat.
type PartError struct {
	Path         string
	Index, Count int
}

func (e *PartError) Error() string {
	return fmt.Sprintf("%s is part %d of %d of an archive: merge first, all %d parts into one archive", e.Path, e.Index, e.Count, e.Count)
}

// Is reports whether target is ErrPart or ErrFormat.
func (e *PartError) Is(target error) bool { return target == ErrPart || target == ErrFormat }

func readManifest(f *stfile.File) (*Manifest, error) {
	md := f.Metadata()
	js, ok := md[MetadataKey]
	if !ok {
		return nil, fmt.Errorf("%w: no %q in __metadata__ (is this a deltacome archive?)", ErrFormat, MetadataKey)
	}
	sum, ok := md[MetadataCRCKey]
	if !ok {
		return nil, fmt.Errorf("%w: no %q in __metadata__", ErrFormat, MetadataCRCKey)
	}
	if want := ManifestCRC(js); sum != want {
		return nil, fmt.Errorf("%w: manifest: crc32c %s, header says %q", ErrChecksum, want, sum)
	}
	var m Manifest
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrFormat, err)
	}
	blobs := make(map[string]stfile.Info, f.Len())
	for _, n := range f.Names() {
		blobs[n], _ = f.Info(n)
	}
	if err := m.validate(blobs); err != nil {
		return nil, err
	}
	return &m, nil
}

// ManifestCRC is the MetadataCRCKey value for the manifest JSON js: its
// CRC-32C as 8 lowercase hex digits (docs/FORMAT.md section 1).
func ManifestCRC(js string) string { return fmt.Sprintf("%08x", CRC32C([]byte(js))) }

// Blob returns the decoded bytes of b after verifying its checksum. Errors
// wrap ErrChecksum or ErrFormat. The result may alias the file mapping
// (codec raw): callers must not modify it, and it is valid until Close.
func (r *Reader) Blob(b Blob) ([]byte, error) {
	stored, err := r.file.Data(b.Tensor)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	data, err := DecodeBlob(b, stored)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", r.file.Path(), err)
	}
	return data, nil
}

// Path returns the archive's file path.
func (r *Reader) Path() string { return r.file.Path() }

// Size returns the archive's file size in bytes.
func (r *Reader) Size() int64 { return r.file.Size() }

// Close releases the archive file.
func (r *Reader) Close() error { return r.file.Close() }
