package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/pkg/archive"
)

// ErrVerify reports an archive that does not give back its fine-tune: a
// tensor that should be bit-exact differs, a tensor is missing on one side,
// or the error of the lossy tensors is above the accepted maximum.
var ErrVerify = errors.New("verification failed")

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Workers bounds the tensors processed at once; < 1 sizes the pool as
	// Reconstruct does.
	Workers int
	// Progress receives per-tensor events; nil means none.
	Progress Progress
}

// TensorCheck is what Verify measured for one tensor.
type TensorCheck struct {
	Name  string
	DType string
	Shape []uint64
	// Kind is the storage kind in the archive (pkg/archive Kind* constants).
	Kind string
	// Exact reports a reconstruction byte-identical to the fine-tune's tensor.
	Exact bool
	// ErrNorm is |W_hat - W_ft|_F and DeltaNorm |W_ft - W_base|_F, both
	// computed in float64 from the tensors' own dtypes (the rounding of
	// W_hat to the fine-tune's dtype included). DeltaNorm is 0 for a tensor
	// with no base counterpart.
	ErrNorm, DeltaNorm float64
	// WeightNorm is |W_ft|_F.
	WeightNorm float64
	// RelError is ErrNorm / DeltaNorm: 0 for an exact tensor, +Inf for an
	// inexact one whose delta is zero.
	RelError float64
	// RecordedError is the relative error the archive recorded at
	// compression for a lossy tensor; 0 otherwise.
	RecordedError float64
	// Problem says why the tensor fails verification; "" when it passes.
	Problem string
}

// VerifyReport is what Verify finds.
type VerifyReport struct {
	// Tensors are the archive's tensors in record order, then any
	// fine-tune tensor the archive lacks.
	Tensors []TensorCheck
	// Lossy counts the tensors that are not bit-exact; Exact the others.
	Lossy, Exact int
	// RelError aggregates the inexact tensors with a nonzero delta:
	// sqrt(sum ErrNorm^2 / sum DeltaNorm^2); 0 when there are none.
	RelError float64
	// WeightRelError is sqrt(sum ErrNorm^2 / sum WeightNorm^2) over all
	// tensors: the error relative to the whole fine-tune.
	WeightRelError float64
	// SideFiles is the number of side files whose checksums were checked.
	SideFiles int
	// Problems lists every failure found, tensor or side file.
	Problems []string
}

// Check returns nil when the report has no problems and its aggregate
// RelError is at most maxError; otherwise an error wrapping ErrVerify that
// says why. A negative or NaN maxError accepts any error.
func (r *VerifyReport) Check(maxError float64) error {
	if n := len(r.Problems); n > 0 {
		return fmt.Errorf("%w: %d problems, the first: %s", ErrVerify, n, r.Problems[0])
	}
	if maxError >= 0 && r.RelError > maxError {
		return fmt.Errorf("%w: relative error %.6g of the %d lossy tensors is above the maximum %g", ErrVerify, r.RelError, r.Lossy, maxError)
	}
	return nil
}

// Verify reconstructs the archive at archivePath in memory against BASE
// (basePath) and compares every tensor with the fine-tune FT (ftPath). Every
// blob's CRC-32C is checked as it is read, every bit-exact tensor against its
// recorded SHA-256, every side file against its SHA-256 and, when FT is a
// folder holding it, against FT's copy. The base must be the archive's own
// (errors wrap ErrWrongBase otherwise). Differences between the
// reconstruction and FT are not errors but entries of the report: call
// Check on it.
func Verify(ctx context.Context, basePath, ftPath, archivePath string, opt VerifyOptions) (*VerifyReport, error) {
	if opt.Progress == nil {
		opt.Progress = NoProgress{}
	}
	ar, err := openArchive(archivePath)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	m := ar.Manifest
	base, ft, err := openPair(basePath, ftPath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	defer ft.Close()
	if err := checkBaseLayout(base, m, false); err != nil {
		return nil, err
	}
	baseRec := make(map[string]archive.BaseTensor, len(m.Base.Tensors))
	for _, bt := range m.Base.Tensors {
		baseRec[bt.Name] = bt
	}
	var total int64
	for i := range m.Tensors {
		total += m.Tensors[i].Bytes
	}
	opt.Progress.Begin(len(m.Tensors), total)

	rep := &VerifyReport{}
	var errSq, deltaSq, allErrSq, weightSq float64
	work := func(ctx context.Context, i int) (TensorCheck, error) {
		return checkTensor(ar, base, ft, &m.Tensors[i], baseRec, m)
	}
	consume := func(i int, c TensorCheck) error {
		rep.Tensors = append(rep.Tensors, c)
		if c.Problem != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("tensor %q: %s", c.Name, c.Problem))
		}
		if c.Exact {
			rep.Exact++
		} else {
			rep.Lossy++
			if c.DeltaNorm > 0 {
				errSq += c.ErrNorm * c.ErrNorm
				deltaSq += c.DeltaNorm * c.DeltaNorm
			}
		}
		if !math.IsInf(c.ErrNorm, 0) {
			allErrSq += c.ErrNorm * c.ErrNorm
		}
		weightSq += c.WeightNorm * c.WeightNorm
		rec := &m.Tensors[i]
		opt.Progress.Tensor(Event{Index: i, Total: len(m.Tensors), Name: rec.Name, Shape: rec.Shape, DType: rec.DType,
			Kind: rec.Kind, OrigBytes: rec.Bytes, StoredBytes: rec.StoredBytes(), RelError: c.RelError})
		return nil
	}
	n := opt.Workers
	if n < 1 {
		n = reconstructWorkers(m)
	}
	if err := ordered(ctx, len(m.Tensors), n, work, consume); err != nil {
		return nil, err
	}
	inArchive := make(map[string]bool, len(m.Tensors))
	for i := range m.Tensors {
		inArchive[m.Tensors[i].Name] = true
	}
	for _, name := range ft.Names() {
		if !inArchive[name] {
			t, _ := ft.Tensor(name)
			c := TensorCheck{Name: name, DType: t.DType.String(), Shape: t.Shape, Problem: "in the fine-tune but not in the archive"}
			rep.Tensors = append(rep.Tensors, c)
			rep.Problems = append(rep.Problems, fmt.Sprintf("tensor %q: %s", name, c.Problem))
		}
	}
	if deltaSq > 0 {
		rep.RelError = math.Sqrt(errSq / deltaSq)
	}
	if weightSq > 0 {
		rep.WeightRelError = math.Sqrt(allErrSq / weightSq)
	}
	if err := verifySideFiles(ar, ft, m, rep); err != nil {
		return nil, err
	}
	return rep, ctx.Err()
}

// verifyChunk is the number of elements checkTensor converts at a time.
const verifyChunk = 1 << 16

// checkTensor decodes one tensor as Reconstruct does (decodeTensor) and
// compares it with the fine-tune's. Archive and base faults are returned as
// errors; differences from FT go into the TensorCheck.
func checkTensor(ar *archive.Reader, base, ft *checkpoint.Checkpoint, rec *archive.Tensor, baseRec map[string]archive.BaseTensor, m *archive.Manifest) (TensorCheck, error) {
	c := TensorCheck{Name: rec.Name, DType: rec.DType, Shape: rec.Shape, Kind: rec.Kind}
	c.RecordedError, _, _ = rec.DeltaError()
	defer base.Release(rec.Name)
	defer ft.Release(rec.Name)
	out, err := decodeTensor(ar, base, rec, baseRec, m, false, newBuffer)
	if err != nil {
		return c, err
	}
	ftT, ok := ft.Tensor(rec.Name)
	if !ok {
		c.Problem = "in the archive but not in the fine-tune " + ft.Path()
		return c, nil
	}
	if ftT.DType.String() != rec.DType || !slices.Equal(ftT.Shape, rec.Shape) {
		c.Problem = fmt.Sprintf("the fine-tune has %s %v, the archive %s %v", ftT.DType, ftT.Shape, rec.DType, rec.Shape)
		return c, nil
	}
	ftData, err := ft.Data(rec.Name)
	if err != nil {
		return c, errorf(ErrInput, "fine-tune: %w", err)
	}
	if sha256Hex(ftData) != rec.SHA256 {
		c.Problem = "the fine-tune's bytes differ from those the archive was made from (SHA-256)"
	}
	c.Exact = bytes.Equal(out, ftData)
	if !c.Exact && !archive.KindLossy(rec.Kind) && c.Problem == "" {
		c.Problem = "stored bit-exact (" + rec.Kind + ") but reconstructed bytes differ from the fine-tune"
	}
	dt, err := safetensors.ParseDType(rec.DType)
	if err != nil || !dtype.IsFloat(dt) {
		// Non-float tensors are compared byte for byte only.
		if !c.Exact {
			c.ErrNorm, c.RelError = math.Inf(1), math.Inf(1)
		}
		return c, nil
	}
	var bdata []byte
	var bdt safetensors.DType
	if bt, ok := base.Tensor(rec.Name); ok && dtype.IsFloat(bt.DType) && slices.Equal(bt.Shape, rec.Shape) {
		if bdata, err = base.Data(rec.Name); err != nil {
			return c, errorf(ErrInput, "base: %w", err)
		}
		bdt = bt.DType
	}
	// The norms are summed in element order, a chunk of float32 values at a
	// time: no full-size float32 copy of the three tensors is needed.
	size, bsize := int(dt.Size()), int(bdt.Size())
	n := len(ftData) / size
	hat, want, baseVals := make([]float32, verifyChunk), make([]float32, verifyChunk), make([]float32, verifyChunk)
	var e2, d2, w2 float64
	for lo := 0; lo < n; lo += verifyChunk {
		hi := min(lo+verifyChunk, n)
		h, w, b := hat[:hi-lo], want[:hi-lo], baseVals[:hi-lo]
		if err := errors.Join(dtype.Decode(h, out[lo*size:hi*size], dt), dtype.Decode(w, ftData[lo*size:hi*size], dt)); err != nil {
			return c, errorf(ErrInput, "tensor %q: %w", rec.Name, err)
		}
		if bdata != nil {
			if err := dtype.Decode(b, bdata[lo*bsize:hi*bsize], bdt); err != nil {
				return c, errorf(ErrInput, "base tensor %q: %w", rec.Name, err)
			}
		}
		for i, x := range w {
			d := float64(h[i]) - float64(x)
			e2 += d * d
			w2 += float64(x) * float64(x)
			if bdata != nil {
				dl := float64(x) - float64(b[i])
				d2 += dl * dl
			}
		}
	}
	c.ErrNorm, c.DeltaNorm, c.WeightNorm = math.Sqrt(e2), math.Sqrt(d2), math.Sqrt(w2)
	switch {
	case c.ErrNorm == 0:
		c.RelError = 0
	case c.DeltaNorm == 0:
		c.RelError = math.Inf(1)
	default:
		c.RelError = c.ErrNorm / c.DeltaNorm
	}
	return c, nil
}

// verifySideFiles checks every side file's SHA-256 and compares it with the
// fine-tune folder's copy when there is one.
func verifySideFiles(ar *archive.Reader, ft *checkpoint.Checkpoint, m *archive.Manifest, rep *VerifyReport) error {
	ftFiles, _, err := ft.SideFiles()
	if err != nil {
		return errorf(ErrInput, "fine-tune: %w", err)
	}
	for _, f := range m.SideFiles {
		data, err := ar.Blob(f.Blob)
		if err != nil {
			return fmt.Errorf("side file %q: %w", f.Name, err)
		}
		if sha256Hex(data) != f.SHA256 {
			return fmt.Errorf("%w: side file %q: bytes do not match the recorded SHA-256", archive.ErrChecksum, f.Name)
		}
		rep.SideFiles++
		i := slices.IndexFunc(ftFiles, func(s checkpoint.SideFile) bool { return s.Name == f.Name })
		if i < 0 {
			continue
		}
		mine, err := readSmallFile(ftFiles[i].Path, ftFiles[i].Size)
		if err != nil {
			return errorf(ErrInput, "fine-tune side file: %w", err)
		}
		if !bytes.Equal(mine, data) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("side file %q differs from the fine-tune's %s", f.Name, ftFiles[i].Path))
		}
	}
	return nil
}
