package delta

import (
	"errors"
	"fmt"
	"slices"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
)

var (
	// ErrWrongBase reports a base checkpoint that is not the one the
	// archive was made against: other tensor names, dtypes or shapes, or
	// a tensor with other bytes.
	ErrWrongBase = errors.New("wrong base checkpoint")
	// ErrNotFound reports a tensor name the archive does not hold.
	ErrNotFound = errors.New("tensor not in the archive")
	// ErrNotFloat reports a tensor whose dtype is not floating-point
	// (F16, BF16, F32 or F64), asked for as float32 values.
	ErrNotFloat = errors.New("tensor is not floating-point")
)

// Reader reconstructs the tensors of one archive over its base. It holds
// both files open (memory-mapped) until Close.
type Reader struct {
	ar      *archive.Reader
	base    *checkpoint.Checkpoint
	recs    map[string]*archive.Tensor
	baseSHA map[string]string
}

// Open opens the archive at archivePath and the base checkpoint at
// basePath (a .safetensors file or a Hugging Face model folder, sharded or
// not) and checks that the base has the tensor names, dtypes and shapes
// the archive records for its base. Errors wrap pkg/archive's ErrFormat,
// ErrVersion or ErrChecksum for an archive it refuses, or ErrWrongBase.
// The caller must Close the Reader.
func Open(basePath, archivePath string) (*Reader, error) {
	ar, err := archive.Open(archivePath)
	if err != nil {
		return nil, err
	}
	base, err := checkpoint.Open(basePath)
	if err != nil {
		ar.Close()
		return nil, fmt.Errorf("base: %w", err)
	}
	r := &Reader{ar: ar, base: base, recs: make(map[string]*archive.Tensor), baseSHA: make(map[string]string)}
	m := ar.Manifest
	for i := range m.Tensors {
		r.recs[m.Tensors[i].Name] = &m.Tensors[i]
	}
	for _, bt := range m.Base.Tensors {
		r.baseSHA[bt.Name] = bt.SHA256
		t, ok := base.Tensor(bt.Name)
		if !ok || t.DType.String() != bt.DType || !slices.Equal(t.Shape, bt.Shape) {
			r.Close()
			return nil, fmt.Errorf("%w: %s: tensor %q is not the %s %v the archive's base holds", ErrWrongBase, basePath, bt.Name, bt.DType, bt.Shape)
		}
	}
	if n := base.Len(); n != len(m.Base.Tensors) {
		r.Close()
		return nil, fmt.Errorf("%w: %s holds %d tensors, the archive's base %d", ErrWrongBase, basePath, n, len(m.Base.Tensors))
	}
	return r, nil
}

// Manifest returns the archive's manifest: its tensor records say each
// tensor's dtype, shape and storage kind. Callers must not modify it.
func (r *Reader) Manifest() *archive.Manifest { return r.ar.Manifest }

// Names lists the archive's tensors, in the order of its records.
func (r *Reader) Names() []string {
	names := make([]string, len(r.ar.Manifest.Tensors))
	for i, t := range r.ar.Manifest.Tensors {
		names[i] = t.Name
	}
	return names
}

// Tensor returns the bytes of the fine-tune tensor name, little-endian in
// its recorded dtype, exactly as `deltacome reconstruct` writes them. The
// slice is the caller's. Errors wrap ErrNotFound, ErrWrongBase (a base
// tensor whose SHA-256 is not the one recorded), or pkg/archive's
// ErrFormat or ErrChecksum (a damaged blob, or bit-exact bytes that do not
// match their SHA-256).
func (r *Reader) Tensor(name string) ([]byte, error) {
	rec, ok := r.recs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	var bdata []byte
	var bt checkpoint.Tensor
	if k, ok := storage.Lookup(rec.Kind); ok && k.Base {
		if bt, ok = r.base.Tensor(name); !ok {
			return nil, fmt.Errorf("%w: tensor %q is stored against the base, which lacks it", ErrWrongBase, name)
		}
		var err error
		if bdata, err = r.base.Data(name); err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
		defer r.base.Release(name)
		if storage.SHA256Hex(bdata) != r.baseSHA[name] {
			return nil, fmt.Errorf("%w: tensor %q has other bytes than the archive's base", ErrWrongBase, name)
		}
	}
	var owned []byte
	out, err := storage.DecodeTensor(r.ar, rec, bdata, bt.DType, true, func(n int64) []byte {
		owned = make([]byte, n)
		return owned
	})
	switch {
	case errors.Is(err, storage.ErrBase):
		return nil, fmt.Errorf("%w: %w", ErrWrongBase, err)
	case err != nil:
		return nil, err
	case owned == nil: // the base's or the archive's own bytes
		return slices.Clone(out), nil
	}
	return out, nil
}

// Float32 returns the values of the fine-tune tensor name, row-major, as
// Tensor's bytes decoded to float32: exact for F16 and BF16, rounded to
// nearest even for F64. Errors are Tensor's, or wrap ErrNotFloat.
func (r *Reader) Float32(name string) ([]float32, error) {
	b, err := r.Tensor(name)
	if err != nil {
		return nil, err
	}
	dt, err := safetensors.ParseDType(r.recs[name].DType) // known: validated when opened
	if err != nil || !dtype.IsFloat(dt) {
		return nil, fmt.Errorf("%w: tensor %q is %s", ErrNotFloat, name, r.recs[name].DType)
	}
	x := make([]float32, len(b)/int(dt.Size()))
	if err := dtype.Decode(x, b, dt); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return x, nil
}

// Close releases the archive and the base.
func (r *Reader) Close() error {
	return errors.Join(r.ar.Close(), r.base.Close())
}
