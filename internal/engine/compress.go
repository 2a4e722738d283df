package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Modes of compression (archive Settings.Mode).
const (
	// ModeDeltaCoMe low-rank compresses the selected projections and stores
	// everything else losslessly.
	ModeDeltaCoMe = "deltacome"
	// ModeLossless stores every tensor bit-exact.
	ModeLossless = "lossless"
)

// CompressOptions configures Compress.
type CompressOptions struct {
	// Mode is ModeDeltaCoMe or ModeLossless.
	Mode string
	// Method is how ModeDeltaCoMe stores the selected projections:
	// MethodDeltaCoMe (also ""), MethodBitDelta or MethodLowRank.
	Method string
	// Ratio is the compression ratio each low-rank tensor must meet: its
	// stored bytes are at most its fp16 size / Ratio.
	Ratio float64
	// MaxError, when set (0 < MaxError < 1), replaces Ratio with a target:
	// the smallest archive found whose aggregate relative error over the
	// lossy projections, sqrt(Σ |Delta - Delta_hat|² / Σ |Delta|²) as
	// recorded, is at most MaxError (see target.go). Method deltacome only;
	// not with Shard.
	MaxError float64
	// Budget is how the bytes are spread over the projections (see
	// target.go): BudgetMatrix, each projection fp16 size / Ratio or one
	// common ratio for MaxError; BudgetModel, each projection's budget
	// chosen within a trust region around that so that the aggregate
	// error is least for the bytes (with Ratio: within Σ fp16 size / Ratio
	// over the projections). "" means BudgetModel with MaxError and
	// BudgetMatrix with Ratio.
	Budget string
	// Schedule allocates bit widths to singular vectors.
	Schedule alloc.Schedule
	// GroupSize is the quantization group length along each singular
	// vector; on GridSym 0 means one group (one scale) per vector.
	GroupSize int
	// Grid is the quantization grid of MethodDeltaCoMe: GridSym (also "")
	// or GridAsym; "" for the other methods.
	Grid string
	// Refit is the number of alternating least-squares rounds run on the
	// quantized factors on GridSym (0: none; see svdquant.EncodeSym).
	Refit int
	// SVD selects the truncated SVD route of each projection (zero value:
	// auto, see linalg.Route); recorded as Settings.SVD.
	SVD linalg.Route
	// Calibration is the path of input statistics (docs/CALIBRATION.md);
	// "" means data-free. With it each projection with an input site in
	// the statistics also gets the calibrated encode on GridSym, and keeps
	// whichever result has the lower H-weighted error. Not with MaxError
	// or BudgetModel.
	Calibration string
	// Select picks the tensors to low-rank compress.
	Select *Selector
	// Workers bounds the tensors processed at once; < 1 sizes the pool
	// from MaxMemory and the largest working set (see MemoryPlan).
	Workers int
	// MaxMemory caps the memory Compress plans for, bytes; < 1 means
	// DefaultMaxMemory. It sizes the pool and sets the runtime's soft
	// memory limit for the duration of Compress (unless GOMEMLIMIT is
	// set); a tensor larger than the cap is still encoded, alone and
	// slower. The archive does not depend on it.
	MaxMemory int64
	// Tool is recorded in the manifest (name and version).
	Tool string
	// Progress receives per-tensor events; nil means none.
	Progress Progress
	// Overwrite replaces an existing archive at the output path; without it
	// Compress refuses one (ErrExists). An input is never overwritten.
	Overwrite bool
	// Shard, when set, makes Compress write part Shard.Index of
	// Shard.Count (a part file, docs/FORMAT.md section 7) instead of the
	// archive: that part's share of the work, which Merge joins with the
	// other parts into the archive Compress writes without it.
	Shard Shard

	// target is the budget of each lossy tensor chosen by the first pass
	// (MaxError or BudgetModel), set by Compress before it encodes.
	target *targetPlan
	// calib is the opened Calibration, set by Compress before it encodes.
	calib *calibStats
}

// Summary totals a finished Compress.
type Summary struct {
	Tensors     int
	OrigBytes   int64 // the fine-tune's tensor bytes
	ArchiveSize int64 // the archive file's size
	// LossyTensors counts the lossily stored projections (any method);
	// AggRelError aggregates them: sqrt(sum err^2 / sum |Delta|^2).
	LossyTensors int
	AggRelError  float64
	// Warnings lists what was reported through Progress.Warn, in order.
	Warnings []Warning
	// TargetSteps counts, for MaxError, the re-encodings of projections
	// whose measured error missed their share of the target at the budget
	// the first pass chose (each moved one step up its ladder).
	TargetSteps int
}

// Compress writes an archive at outPath holding FT (ftPath) as a delta to
// BASE (basePath), or with opt.Shard one part of it. outPath is replaced
// only when the file is complete.
func Compress(ctx context.Context, basePath, ftPath, outPath string, opt CompressOptions) (*Summary, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	if opt.Progress == nil {
		opt.Progress = NoProgress{}
	}
	if err := checkArchiveOut(outPath, opt.Overwrite, basePath, ftPath); err != nil {
		return nil, err
	}
	base, ft, err := openPair(basePath, ftPath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	defer ft.Close()

	var sum Summary
	warn := func(w Warning) {
		sum.Warnings = append(sum.Warnings, w)
		opt.Progress.Warn(w)
	}
	if err := checkClasses(base, ft, &opt); err != nil {
		return nil, err
	}
	side, skipped, err := ft.SideFiles()
	if err != nil {
		return nil, errorf(ErrInput, "fine-tune: %w", err)
	}
	for _, w := range append(pairWarnings(base, ft, &opt), skippedWarnings(skipped)...) {
		warn(w)
	}
	if opt.Calibration != "" {
		var warns []Warning
		if opt.calib, warns, err = openCalibration(opt.Calibration, base, ft, &opt); err != nil {
			return nil, err
		}
		defer opt.calib.Close()
		for _, w := range warns {
			warn(w)
		}
	}
	m, err := newManifest(ft, opt)
	if err != nil {
		return nil, err
	}
	if opt.firstPass() {
		if opt.target, err = planTarget(ctx, base, ft, &opt); err != nil {
			return nil, err
		}
	}
	w, err := archive.Create(outPath)
	if err != nil {
		return nil, err
	}
	defer w.Abort() // no-op after a successful Commit

	names := ft.Names()
	var parts *assignment // nil: the whole archive
	if opt.Shard.sharded() {
		if parts, err = assign(base, ft, side, &opt, opt.Shard.Count); err != nil {
			return nil, err
		}
		names = parts.names(ft, opt.Shard.Index)
		if m.Part, err = partRecord(base, ft, side, opt.Shard); err != nil {
			return nil, err
		}
		m.Format, m.Version = archive.PartFormatName, archive.PartVersion
	}
	mp := planMemory(base, ft, names, &opt) // workers.go
	opt.Workers = mp.Workers
	defer setMemoryLimit(mp.MaxMemory)()
	var total int64
	for _, n := range names {
		t, _ := ft.Tensor(n)
		total += t.Size
	}
	opt.Progress.Begin(len(names), total)

	baseHash := make(map[string]string, len(base.Names()))
	var errSq, normSq float64
	var zeroRank []string // rank 0 that the headers did not predict
	work := func(ctx context.Context, i int) (*encoded, error) {
		e, err := encodeTensor(base, ft, names[i], opt)
		// Nothing encoded aliases the inputs: let their pages go, so that
		// memory does not grow with the bytes read.
		ft.Release(names[i])
		base.Release(names[i])
		return e, err
	}
	consume := func(i int, e *encoded) error {
		for _, b := range e.blobs {
			if err := w.Add(b.Blob, b.dtype, b.shape, b.stored); err != nil {
				return err
			}
			e.rec.Blobs = append(e.rec.Blobs, b.Blob)
		}
		if e.baseSHA != "" {
			baseHash[e.rec.Name] = e.baseSHA
		}
		m.Tensors = append(m.Tensors, e.rec)
		ev := tensorEvent(i, len(names), &e.rec)
		if rel, norm, ok := e.rec.DeltaError(); ok {
			errSq += (rel * norm) * (rel * norm)
			normSq += norm * norm
			sum.LossyTensors++
		}
		sum.OrigBytes += e.rec.Bytes
		sum.TargetSteps += e.targetSteps
		if rankZero(&e.rec) && !rankZeroAhead(e.rec.Shape, &opt) {
			zeroRank = append(zeroRank, e.rec.Name)
		}
		opt.Progress.Tensor(ev)
		return nil
	}
	if err := ordered(ctx, len(names), opt.workers(), work, consume); err != nil {
		return nil, err
	}
	if len(zeroRank) > 0 {
		warn(rankZeroWarning(zeroRank))
	}
	if err := opt.target.checkTarget(errSq, normSq); err != nil {
		return nil, err
	}
	if opt.calib != nil && parts == nil {
		if w, ok := opt.calib.modelWarning(m.Tensors); ok {
			warn(w)
		}
	}

	var mine func(string) bool // the base tensors this part records
	if parts != nil {
		mine = func(name string) bool {
			return parts.ft[name] == opt.Shard.Index || parts.baseOnly[name] == opt.Shard.Index
		}
	}
	if m.Base, err = fingerprintBase(ctx, base, baseHash, mine); err != nil {
		return nil, err
	}
	m.Base.Source = sourceName(basePath)
	if parts == nil || parts.side == opt.Shard.Index {
		if err := addSideFiles(side, w, m); err != nil {
			return nil, err
		}
	}
	if sum.ArchiveSize, err = commit(ctx, w, m, outPath, opt.Overwrite, basePath, ftPath); err != nil {
		return nil, err
	}
	sum.Tensors = len(names)
	if normSq > 0 {
		sum.AggRelError = math.Sqrt(errSq / normSq)
	}
	return &sum, nil
}

// sourceName is what an archive records of where its base came from: the
// base's file or folder name, without the path leading to it, which would
// make archives of the same inputs differ from machine to machine.
func sourceName(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return filepath.Base(path)
}

func (opt *CompressOptions) validate() error {
	if err := opt.Shard.validate(); err != nil {
		return err
	}
	switch opt.Mode {
	case ModeLossless:
	case ModeDeltaCoMe:
		if err := opt.validateTarget(); err != nil {
			return err
		}
		if opt.MaxError == 0 && !(opt.Ratio >= 1) {
			return errorf(ErrUsage, "ratio must be >= 1, got %v", opt.Ratio)
		}
		if err := checkMethod(opt.Method, opt.Grid); err != nil {
			return err
		}
		if g := opt.GroupSize; g < 0 || (g == 0 && opt.method() == MethodDeltaCoMe && opt.grid() != GridSym) {
			return errorf(ErrUsage, "group size must be >= 1 (>= 0 on grid sym), got %d", opt.GroupSize)
		}
		if opt.Refit < 0 || opt.Refit > svdquant.MaxRefit {
			return errorf(ErrUsage, "refit rounds must be 0 to %d, got %d", svdquant.MaxRefit, opt.Refit)
		}
		if opt.Select == nil {
			return errorf(ErrUsage, "no tensor selector")
		}
		if err := opt.validateCalibration(); err != nil {
			return err
		}
	default:
		return errorf(ErrUsage, "unknown mode %q", opt.Mode)
	}
	if opt.Mode != ModeDeltaCoMe && opt.Calibration != "" {
		return errorf(ErrUsage, "calibration statistics apply to lossy compression only, not to mode %s", opt.Mode)
	}
	return nil
}

// validateCalibration refuses the combinations calibration does not
// support: it is built for the symmetric grid of method deltacome at a
// fixed ratio per matrix (an error target or a model budget would choose
// budgets from data-free errors the calibrated encode then changes).
func (opt *CompressOptions) validateCalibration() error {
	switch {
	case opt.Calibration == "":
	case opt.method() != MethodDeltaCoMe:
		return errorf(ErrUsage, "calibration statistics apply to method %s only, not %s", MethodDeltaCoMe, opt.method())
	case opt.grid() != GridSym:
		return errorf(ErrUsage, "calibration statistics apply to grid %s only: grid %s has no calibrated encode", GridSym, opt.grid())
	case opt.MaxError > 0:
		return errorf(ErrUsage, "calibration statistics cannot be combined with an error target: the target is met on data-free errors; give a ratio")
	case opt.firstPass():
		return errorf(ErrUsage, "calibration statistics cannot be combined with budget %s: it spreads bytes by data-free errors; use budget %s", BudgetModel, BudgetMatrix)
	}
	return nil
}

func (opt *CompressOptions) workers() int {
	if opt.Workers >= 1 {
		return opt.Workers
	}
	return runtime.GOMAXPROCS(0)
}

func newManifest(ft *checkpoint.Checkpoint, opt CompressOptions) (*archive.Manifest, error) {
	m := &archive.Manifest{
		Format:   archive.FormatName,
		Version:  archive.Version,
		Tool:     opt.Tool,
		Settings: archive.Settings{Mode: opt.Mode},
		Layout:   archive.Layout{Folder: ft.IsFolder(), Index: ft.IndexFile()},
	}
	if opt.Mode == ModeDeltaCoMe {
		m.Settings.Ratio = opt.Ratio
		switch {
		case opt.MaxError > 0:
			m.Settings.Ratio, m.Settings.MaxError, m.Settings.Budget = 0, opt.MaxError, opt.budgetMode()
		case opt.firstPass():
			m.Settings.Budget = BudgetModel
		}
		m.Settings.Schedule = opt.Schedule.String()
		m.Settings.GroupSize = opt.GroupSize
		m.Settings.SVD = opt.SVD.String()
		m.Settings.Include = opt.Select.Include
		m.Settings.Exclude = opt.Select.Exclude
		opt.recordMethod(&m.Settings)
		if opt.calib != nil {
			c := opt.calib.record
			m.Settings.Calibration = &c
		}
	}
	for i, sh := range ft.Shards() {
		m.Layout.Shards = append(m.Layout.Shards, archive.Shard{File: ft.ShardNames()[i], Header: string(sh.Header())})
	}
	return m, nil
}

// encoded is one tensor's archive record and the blobs to store for it.
type encoded struct {
	rec     archive.Tensor
	blobs   []blob
	baseSHA string // SHA-256 of the paired base tensor, "" if none
	// targetSteps counts the re-encodings of storeTarget.
	targetSteps int
}

type blob struct {
	archive.Blob
	dtype  safetensors.DType
	shape  []uint64
	stored []byte
}

func encodeTensor(base, ft *checkpoint.Checkpoint, name string, opt CompressOptions) (*encoded, error) {
	t, _ := ft.Tensor(name)
	data, err := ft.Data(name)
	if err != nil {
		return nil, errorf(ErrInput, "fine-tune: %w", err)
	}
	e := &encoded{rec: archive.Tensor{Name: name, DType: t.DType.String(), Shape: t.Shape, Shard: t.Shard,
		Bytes: int64(len(data))}}

	class, err := classify(base, ft, name, &opt) // the rule Plan (plan.go) shares
	if err != nil {
		return nil, err
	}
	bt, inBase := base.Tensor(name)
	if !inBase {
		e.rec.SHA256 = sha256Hex(data)
		return e, e.storeFull(data, t.DType)
	}
	bdata, err := base.Data(name)
	if err != nil {
		return nil, errorf(ErrInput, "base: %w", err)
	}
	e.rec.SHA256, e.baseSHA = sha256Both(data, bdata,
		func(off, n int64) { ft.ReleaseRange(name, off, n) },
		func(off, n int64) { base.ReleaseRange(name, off, n) })

	switch {
	case class != classFull && bt.DType == t.DType && e.baseSHA == e.rec.SHA256 && bytes.Equal(bdata, data):
		return e, e.store(archive.KindSame, &storage.Input{})
	case class == classLossy:
		release := func(r0, r1 int) { // the pages of rows [r0, r1), once decoded
			cols := int64(t.Shape[1])
			fs, bs := int64(t.DType.Size()), int64(bt.DType.Size())
			ft.ReleaseRange(name, int64(r0)*cols*fs, int64(r1-r0)*cols*fs)
			base.ReleaseRange(name, int64(r0)*cols*bs, int64(r1-r0)*cols*bs)
		}
		return e, e.storeLossy(data, t.DType, bdata, bt.DType, release, opt)
	case class == classFull:
		return e, e.storeFull(data, t.DType)
	default:
		return e, e.store(archive.KindXOR, &storage.Input{Data: data, Base: bdata, ElemSize: int(t.DType.Size())})
	}
}

func (e *encoded) storeFull(data []byte, dt safetensors.DType) error {
	return e.store(archive.KindFull, &storage.Input{Data: data, ElemSize: int(dt.Size())})
}

// storeLossy stores a selected projection as the lossy kind of the method.
// Delta-CoMe reads the delta from data and bdata a block of rows at a time
// (svdquant.DeltaRows), calling release with the rows decoded; the other
// methods, and an error target's passes, take it whole in float32.
func (e *encoded) storeLossy(data []byte, dt safetensors.DType, bdata []byte, bdt safetensors.DType, release func(r0, r1 int), opt CompressOptions) error {
	rows, cols := int(e.rec.Shape[0]), int(e.rec.Shape[1])
	k := opt.kind()
	in := &storage.Input{Rows: rows, Cols: cols, Options: opt.encodeOptions()}
	if opt.target == nil && (k.Name == archive.KindLowRank || k.Name == archive.KindLowRankSym) {
		src, err := svdquant.NewDeltaRows(data, dt, bdata, bdt, rows, cols, release)
		if err != nil {
			return errorf(ErrInput, "tensor %q: %w", e.rec.Name, err)
		}
		in.Source = inputRows{src}
		if opt.calib != nil && k.Name == archive.KindLowRankSym {
			return e.storeCalibrated(in, opt.calib)
		}
		return e.store(k.Name, in)
	}
	in.Delta = make([]float32, rows*cols)
	if err := svdquant.Delta(in.Delta, data, dt, bdata, bdt); err != nil {
		return errorf(ErrInput, "tensor %q: %w", e.rec.Name, err)
	}
	if opt.target != nil {
		return e.storeTarget(in.Delta, rows, cols, opt)
	}
	return e.store(k.Name, in)
}

// inputRows is a delta read from the checkpoints, whose read errors (a
// non-finite element) are the input's (ErrInput).
type inputRows struct{ *svdquant.DeltaRows }

// ReadRows is svdquant.DeltaRows.ReadRows, its errors wrapping ErrInput.
func (r inputRows) ReadRows(dst []float32, r0, r1 int) error {
	if err := r.DeltaRows.ReadRows(dst, r0, r1); err != nil {
		return errorf(ErrInput, "%w", err)
	}
	return nil
}

// store encodes in as storage kind name, through the kind's entry of the
// storage table, and adds its blobs.
func (e *encoded) store(name string, in *storage.Input) error {
	k, _ := storage.Lookup(name) // a kind of the table, named by the caller
	blobs, err := k.Encode(&e.rec, in)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", e.rec.Name, err)
	}
	e.rec.Kind = k.Name
	errs := make([]error, len(blobs))
	for i, b := range blobs {
		errs[i] = e.add(b.Role, b.Raw, b.Codec, b.Shuffle, b.DType, b.Shape)
	}
	return errors.Join(errs...)
}

// add encodes raw as blob role of this tensor. A nil shape means a 1-D U8
// tensor of the stored length.
func (e *encoded) add(role string, raw []byte, codec string, shuffle int, dt safetensors.DType, shape []uint64) error {
	b, stored, err := archive.EncodeBlob(role, e.rec.Name+"/"+role, raw, codec, shuffle)
	if err != nil {
		return err
	}
	if shape == nil {
		shape = []uint64{uint64(len(stored))}
	}
	e.blobs = append(e.blobs, blob{Blob: b, dtype: dt, shape: shape, stored: stored})
	return nil
}

// fingerprintBase builds the base record: every base tensor with its hash,
// reusing the hashes computed while encoding and hashing the rest. With
// want, only the tensors it selects are recorded, and the record (a part's
// share) has no fingerprint.
func fingerprintBase(ctx context.Context, base *checkpoint.Checkpoint, known map[string]string, want func(name string) bool) (archive.Base, error) {
	var b archive.Base
	for _, name := range base.Names() {
		if err := ctx.Err(); err != nil {
			return b, err
		}
		if want != nil && !want(name) {
			continue
		}
		t, _ := base.Tensor(name)
		h, ok := known[name]
		if !ok {
			data, err := base.Data(name)
			if err != nil {
				return b, errorf(ErrInput, "base: %w", err)
			}
			h = sha256Hex(data)
			base.Release(name)
		}
		b.Tensors = append(b.Tensors, archive.BaseTensor{Name: name, DType: t.DType.String(), Shape: t.Shape, SHA256: h})
	}
	if want == nil {
		b.Fingerprint = archive.Fingerprint(b.Tensors)
	}
	return b, nil
}

// addSideFiles stores the side files of the fine-tune folder, byte for
// byte, and records them in m.
func addSideFiles(files []checkpoint.SideFile, w *archive.Writer, m *archive.Manifest) error {
	for _, f := range files {
		data, err := readSmallFile(f.Path, f.Size)
		if err != nil {
			return errorf(ErrInput, "side file: %w", err)
		}
		b, stored, err := archive.EncodeBlob(archive.RoleSideFile, "__side__/"+f.Name, data, archive.CodecZstd, 0)
		if err != nil {
			return err
		}
		if err := w.Add(b, safetensors.U8, []uint64{uint64(len(stored))}, stored); err != nil {
			return err
		}
		m.SideFiles = append(m.SideFiles, archive.SideFile{Name: f.Name, Size: int64(len(data)), SHA256: sha256Hex(data), Blob: b})
	}
	return nil
}

// readSmallFile reads a side file, refusing one that grew past its listed
// size since it was listed.
func readSmallFile(path string, size int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, size+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("%s changed size while being read", path)
	}
	return data, nil
}

// sha256Both returns sha256Hex of a and of b, hashed concurrently, each in
// chunks of hashChunk bytes; relA and relB are called with each chunk's
// range once hashed, so that a mapped tensor's pages can go as the hash
// passes.
func sha256Both(a, b []byte, relA, relB func(off, n int64)) (string, string) {
	var ha string
	done := make(chan struct{})
	go func() {
		ha = sha256Chunked(a, relA)
		close(done)
	}()
	hb := sha256Chunked(b, relB)
	<-done
	return ha, hb
}

// hashChunk is the number of bytes sha256Chunked hashes between releases.
const hashChunk = 16 << 20

// sha256Chunked is sha256Hex of b, calling release with each chunk hashed.
func sha256Chunked(b []byte, release func(off, n int64)) string {
	h := sha256.New()
	for off := 0; off < len(b); off += hashChunk {
		end := min(off+hashChunk, len(b))
		h.Write(b[off:end])
		release(int64(off), int64(end-off))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sha256Hex is the lowercase hex SHA-256 records store.
func sha256Hex(b []byte) string { return storage.SHA256Hex(b) }
