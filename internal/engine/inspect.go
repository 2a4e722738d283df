package engine

import (
	"math"

	"github.com/deltacome/deltacome/pkg/archive"
)

// Report is what Inspect finds in an archive.
type Report struct {
	Path     string
	Size     int64 // archive file size in bytes
	Manifest *archive.Manifest
	Totals   Totals
	// ByKind totals the tensors by storage kind (archive Kind* constants).
	ByKind map[string]*Totals
}

// Totals sums a set of tensors.
type Totals struct {
	Tensors     int
	OrigBytes   int64 // fine-tune bytes
	StoredBytes int64 // bytes of the blobs stored for them
	// RelError aggregates the lossily stored tensors (any method):
	// sqrt(sum err^2 / sum |Delta|^2); 0 when there are none.
	RelError float64
	errSq    float64
	normSq   float64
}

// Ratio returns OrigBytes / StoredBytes, or +Inf when nothing is stored.
func (t *Totals) Ratio() float64 {
	if t.StoredBytes == 0 {
		return math.Inf(1)
	}
	return float64(t.OrigBytes) / float64(t.StoredBytes)
}

func (t *Totals) add(rec *archive.Tensor) {
	t.Tensors++
	t.OrigBytes += rec.Bytes
	t.StoredBytes += rec.StoredBytes()
	if rel, norm, ok := rec.DeltaError(); ok {
		e := rel * norm
		t.errSq += e * e
		t.normSq += norm * norm
		if t.normSq > 0 {
			t.RelError = math.Sqrt(t.errSq / t.normSq)
		}
	}
}

// Inspect opens and validates the archive at path and totals its contents.
// It reads the header only; blob checksums are verified by Reconstruct.
func Inspect(path string) (*Report, error) {
	ar, err := openArchive(path)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	return report(path, ar), nil
}

// report totals the contents of the opened archive ar found at path.
func report(path string, ar *archive.Reader) *Report {
	r := &Report{Path: path, Size: ar.Size(), Manifest: ar.Manifest, ByKind: make(map[string]*Totals)}
	for i := range r.Manifest.Tensors {
		rec := &r.Manifest.Tensors[i]
		r.Totals.add(rec)
		k := r.ByKind[rec.Kind]
		if k == nil {
			k = &Totals{}
			r.ByKind[rec.Kind] = k
		}
		k.add(rec)
	}
	return r
}
