package svdquant

import (
	"fmt"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/dtype"
)

// DeltaRows is the delta ft - base of a rows x cols fine-tune tensor and
// its base, decoded from their bytes a block of rows at a time: the
// linalg.Matrix through which EncodeMatrix streams a delta too large to
// hold whole in float32 from the mapped checkpoints.
type DeltaRows struct {
	ft, base     []byte
	ftDT, baseDT safetensors.DType
	rows, cols   int
	done         func(r0, r1 int)
}

// NewDeltaRows returns the delta of ft (of dtype ftDT) and base (baseDT),
// rows x cols each. done, when not nil, is called after each read with the
// rows read, so that the caller can let their pages go. The inputs are read
// on every ReadRows, never copied: they must stay valid and unchanged. It
// returns an error when a length does not match the shape.
func NewDeltaRows(ft []byte, ftDT safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols int, done func(r0, r1 int)) (*DeltaRows, error) {
	if rows <= 0 || cols <= 0 {
		return nil, fmt.Errorf("delta of %d x %d", rows, cols)
	}
	if err := dtype.CheckLen(rows*cols, len(ft), ftDT); err != nil {
		return nil, fmt.Errorf("fine-tune: %w", err)
	}
	if err := dtype.CheckLen(rows*cols, len(base), baseDT); err != nil {
		return nil, fmt.Errorf("base: %w", err)
	}
	return &DeltaRows{ft: ft, base: base, ftDT: ftDT, baseDT: baseDT, rows: rows, cols: cols, done: done}, nil
}

// Dims returns the delta's shape.
func (d *DeltaRows) Dims() (int, int) { return d.rows, d.cols }

// ReadRows writes rows [r0, r1) of the delta into dst, as Delta computes
// them. Its errors are Delta's, counting elements from the tensor's first:
// the first non-finite element of those rows is reported, of the
// fine-tune's before the base's.
func (d *DeltaRows) ReadRows(dst []float32, r0, r1 int) error {
	lo, hi := r0*d.cols, r1*d.cols
	fs, bs := int(d.ftDT.Size()), int(d.baseDT.Size())
	err := deltaAt(dst[:hi-lo], d.ft[lo*fs:hi*fs], d.ftDT, d.base[lo*bs:hi*bs], d.baseDT, lo)
	if d.done != nil {
		d.done(r0, r1)
	}
	return err
}
