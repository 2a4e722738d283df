package engine

import (
	"context"
	"fmt"
	"os"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// isArchive reports whether path is a file whose safetensors metadata holds
// a deltacome manifest (archive.MetadataKey).
func isArchive(path string) bool {
	st, err := os.Stat(path)
	if err != nil || st.IsDir() {
		return false
	}
	f, err := stfile.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	_, ok := f.Metadata()[archive.MetadataKey]
	return ok
}

// loraArchive is an archive opened for export-lora with its base and the
// adapter's plan.
type loraArchive struct {
	ar   *archive.Reader
	base *checkpoint.Checkpoint
	l    *loraLayout
	ts   []checkpoint.Tensor
	recs map[string]*archive.Tensor
	// baseSHA holds the SHA-256 the archive records for each base tensor.
	baseSHA map[string]string
}

func (a *loraArchive) close() {
	a.base.Close()
	a.ar.Close()
}

// openLoRAArchive validates opt, opens the archive and its base, checks
// that the base is the one the archive was made against (its tensor names,
// dtypes and shapes; bytes are checked as they are read) and plans the
// adapter, each projection's rank capped at the rank the archive keeps.
// Only archives that store projections as kinds lowrank or lowrank-bf16
// are accepted: the factors of a BitDelta projection are not low rank,
// and a lossless archive is better rebuilt (ErrUsage).
func openLoRAArchive(basePath, archivePath string, opt *LoRAOptions) (*loraArchive, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	ar, err := openArchive(archivePath)
	if err != nil {
		return nil, err
	}
	base, err := openCheckpoint("base", basePath)
	if err != nil {
		ar.Close()
		return nil, err
	}
	a := &loraArchive{ar: ar, base: base, recs: map[string]*archive.Tensor{}, baseSHA: map[string]string{}}
	for _, bt := range ar.Manifest.Base.Tensors {
		a.baseSHA[bt.Name] = bt.SHA256
	}
	if err := a.plan(archivePath, opt); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

func (a *loraArchive) plan(archivePath string, opt *LoRAOptions) error {
	m := a.ar.Manifest
	if err := checkBaseLayout(a.base, m, false); err != nil {
		return err
	}
	maxRank := map[string]int{}
	for i := range m.Tensors {
		rec := &m.Tensors[i]
		dt, err := safetensors.ParseDType(rec.DType)
		if err != nil {
			return fmt.Errorf("%w: tensor %q: dtype %q", archive.ErrFormat, rec.Name, rec.DType)
		}
		a.ts = append(a.ts, checkpoint.Tensor{Name: rec.Name, DType: dt, Shape: rec.Shape, Size: rec.Bytes})
		a.recs[rec.Name] = rec
		if k, ok := storage.Lookup(rec.Kind); ok && k.Product != nil {
			r := k.Report(rec).Rank
			if r == nil {
				return fmt.Errorf("%w: tensor %q: %s record missing", archive.ErrFormat, rec.Name, rec.Kind)
			}
			maxRank[rec.Name] = *r
		}
	}
	if len(maxRank) == 0 {
		return errorf(ErrUsage, "%s stores no projection as a low-rank delta (mode %s, method %s): export-lora reads the factors of lowrank and lowrank-bf16 archives; "+
			"give the fine-tune itself instead (deltacome reconstruct rebuilds it from this archive)", archivePath, m.Settings.Mode, methodName(m.Settings.Method))
	}
	var err error
	if a.l, err = planLoRA(a.base, a.ts, archivePath, maxRank, opt); err != nil {
		return err
	}
	for _, mod := range a.l.modules {
		if rec := a.recs[mod.Tensor]; archive.KindLossy(rec.Kind) && !factored(rec) {
			return errorf(ErrUsage, "%s stores %q as bitdelta, a full-rank sign matrix with no factors to truncate: give the fine-tune itself instead", archivePath, mod.Tensor)
		}
	}
	return nil
}

// methodName is the method an archive's settings record, "" meaning
// Delta-CoMe.
func methodName(m string) string {
	if m == "" {
		return MethodDeltaCoMe
	}
	return m
}

// exportArchive is ExportLoRA for an archive: each projection stored as a
// low-rank delta is factored from the delta the archive holds (its
// factors decoded and multiplied out, then truncated to the rank asked);
// projections and other tensors stored bit-exact are decoded and treated as
// from a checkpoint. Errors are measured against the archive's delta; each
// module also carries the archive's own error against the fine-tune.
func exportArchive(ctx context.Context, basePath, archivePath, outDir string, opt LoRAOptions) (*LoRAResult, error) {
	a, err := openLoRAArchive(basePath, archivePath, &opt)
	if err != nil {
		return nil, err
	}
	defer a.close()
	if err := checkOutDir(outDir, basePath, archivePath); err != nil {
		return nil, err
	}
	m := a.ar.Manifest
	baseRec := make(map[string]archive.BaseTensor, len(m.Base.Tensors))
	for _, bt := range m.Base.Tensors {
		baseRec[bt.Name] = bt
	}
	decode := func(name string) ([]byte, error) {
		return decodeTensor(a.ar, a.base, a.recs[name], baseRec, m, false, newBuffer)
	}
	src := loraSource{tensors: a.ts, workers: reconstructWorkers(m), desc: archivePath + " against " + basePath,
		export: func(i int) (loraTensor, error) {
			name := a.ts[i].Name
			r, err := a.export(a.ts[i], decode, &opt)
			a.base.Release(name)
			return r, err
		},
		data: decode}
	res, err := runLoRA(ctx, outDir, a.l, src, &opt)
	if err != nil {
		return nil, err
	}
	res.FromArchive = true
	return res, nil
}

// export factors or measures one tensor of the archive; decode gives the
// fine-tune bytes of a tensor stored bit-exact.
func (a *loraArchive) export(t checkpoint.Tensor, decode func(name string) ([]byte, error), opt *LoRAOptions) (loraTensor, error) {
	rec := a.recs[t.Name]
	if err := a.checkBase(t.Name); err != nil {
		return loraTensor{}, err
	}
	i, isModule := a.l.byName[t.Name]
	switch {
	case rec.Kind == archive.KindSame && isModule:
		return loraTensor{unchanged: a.l.modules[i].Module}, nil
	case rec.Kind == archive.KindSame:
		return loraTensor{}, nil
	case isModule && factored(rec):
		delta, err := a.delta(rec)
		if err != nil {
			return loraTensor{}, err
		}
		mod := a.l.modules[i]
		mod.ArchiveRelError, _, _ = rec.DeltaError()
		f, err := factorDelta(&mod, delta, a.l.conv1D, opt.SVD, opt.DType)
		if err != nil || mod.DeltaNorm == 0 {
			return loraTensor{unchanged: mod.Module}, err
		}
		return loraTensor{module: &mod, factors: f}, nil
	}
	bt, inBase := a.base.Tensor(t.Name)
	if !inBase {
		return absentFromBase(t), nil
	}
	data, err := decode(t.Name)
	if err != nil {
		return loraTensor{}, err
	}
	bdata, err := a.base.Data(t.Name)
	if err != nil {
		return loraTensor{}, errorf(ErrInput, "base: %w", err)
	}
	return exportBytes(t, bt, data, bdata, a.l, opt)
}

// checkBase compares the base tensor name, if the base has it, with the
// SHA-256 the archive records for it: the factors do not need the base's
// bytes, but the adapter is only right on the base the archive was made
// against. Errors wrap ErrWrongBase.
func (a *loraArchive) checkBase(name string) error {
	if _, ok := a.base.Tensor(name); !ok {
		return nil
	}
	data, err := a.base.Data(name)
	if err != nil {
		return errorf(ErrInput, "base: %w", err)
	}
	if sha256Hex(data) != a.baseSHA[name] {
		return wrongBase(a.base, a.ar.Manifest, fmt.Sprintf("tensor %q has other bytes", name))
	}
	return nil
}

// factored reports whether rec's kind stores the delta as factors that
// export-lora can truncate (kinds with a Product in the storage table).
func factored(rec *archive.Tensor) bool {
	k, ok := storage.Lookup(rec.Kind)
	return ok && k.Product != nil
}

// delta multiplies out the delta a factored record stores, row-major as
// the tensor is stored.
func (a *loraArchive) delta(rec *archive.Tensor) ([]float32, error) {
	k, _ := storage.Lookup(rec.Kind) // factored, checked by the caller
	blobs, err := storage.ReadBlobs(a.ar, rec)
	if err != nil {
		return nil, err
	}
	d, err := k.Product(rec, blobs)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
	}
	return d, nil
}
