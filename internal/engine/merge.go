package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// MergeOptions configures Merge.
type MergeOptions struct {
	// Overwrite replaces an existing file at the output path; without it
	// Merge refuses one (ErrExists). A part is never overwritten.
	Overwrite bool
	// Progress receives one event per tensor copied; nil means none.
	Progress Progress
}

// MergeSummary totals a finished Merge.
type MergeSummary struct {
	Parts       int
	Tensors     int
	OrigBytes   int64 // the fine-tune's tensor bytes
	ArchiveSize int64 // the archive file's size
}

// PartSetError reports part files that do not form exactly one complete
// set: the parts of one archive (same inputs, settings, tool and part
// count), each once. It matches ErrInput.
type PartSetError struct {
	// Count is the part count of the set the other parts are measured
	// against: the one most of the parts given belong to.
	Count int
	// Missing lists the numbers of the parts of that set not given.
	Missing []int
	// Repeated lists, for each part number given more than once, the
	// files that hold it.
	Repeated [][]string
	// Foreign lists the files that belong to another set, each with what
	// differs.
	Foreign []ForeignPart
}

// ForeignPart is a part file of another set than the one being merged.
type ForeignPart struct {
	Path string
	// Differs names what is not the set's: "part count", "tool",
	// "settings", "base", "fine-tune".
	Differs string
}

func (e *PartSetError) Error() string {
	var msgs []string
	for _, f := range e.Foreign {
		msgs = append(msgs, fmt.Sprintf("%s belongs to another archive: its %s differs from the other parts'", f.Path, f.Differs))
	}
	for _, r := range e.Repeated {
		msgs = append(msgs, fmt.Sprintf("the same part is given %d times: %s", len(r), strings.Join(r, ", ")))
	}
	if len(e.Missing) > 0 {
		nums := make([]string, len(e.Missing))
		for i, n := range e.Missing {
			nums[i] = fmt.Sprint(n)
		}
		msgs = append(msgs, fmt.Sprintf("missing part %s of %d", strings.Join(nums, ", "), e.Count))
	}
	return "the parts are not one complete set, nothing written: " + strings.Join(msgs, "; ")
}

// Unwrap returns ErrInput.
func (e *PartSetError) Unwrap() error { return ErrInput }

// Merge writes at outPath the archive whose parts (written by Compress with
// Shard) are the files partPaths, in any order: the bytes Compress writes
// without Shard from the same inputs and options. It first checks that the
// parts form exactly one complete set (else a *PartSetError, nothing
// written), then copies each tensor's records and blobs from the part that
// holds it, one blob at a time: memory does not grow with the model.
// Errors wrap ErrUsage, ErrExists, ErrInput or pkg/archive's sentinels.
func Merge(ctx context.Context, partPaths []string, outPath string, opt MergeOptions) (*MergeSummary, error) {
	if len(partPaths) == 0 {
		return nil, errorf(ErrUsage, "no part files to merge")
	}
	if opt.Progress == nil {
		opt.Progress = NoProgress{}
	}
	if r, err := archive.OpenPart(outPath); err == nil {
		r.Close()
		return nil, errorf(ErrUsage, "the last argument, %s, is a part file: give the archive to write last (merge PART... OUT)", outPath)
	}
	if err := checkArchiveOut(outPath, opt.Overwrite, partPaths...); err != nil {
		return nil, err
	}
	var parts []*archive.Reader
	defer func() {
		for _, p := range parts {
			p.Close()
		}
	}()
	for _, path := range partPaths {
		p, err := openPart(path)
		if err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	byIndex, err := checkSet(parts)
	if err != nil {
		return nil, err
	}
	first := byIndex[0].Manifest
	m := &archive.Manifest{Format: archive.FormatName, Version: archive.Version, Tool: first.Tool,
		Settings: first.Settings, Layout: first.Layout}

	names, err := layoutNames(first.Layout)
	if err != nil {
		return nil, err
	}
	type owned struct {
		part *archive.Reader
		rec  *archive.Tensor
	}
	owner := make(map[string]owned, len(names))
	base := make(map[string]archive.BaseTensor, len(first.Part.BaseTensors))
	var side *archive.Reader
	for _, p := range byIndex {
		pm := p.Manifest
		for i := range pm.Tensors {
			t := &pm.Tensors[i]
			if o, dup := owner[t.Name]; dup {
				return nil, fmt.Errorf("%w: tensor %q is recorded by both %s and %s", archive.ErrFormat, t.Name, o.part.Path(), p.Path())
			}
			owner[t.Name] = owned{p, t}
		}
		for _, bt := range pm.Base.Tensors {
			if _, dup := base[bt.Name]; dup {
				return nil, fmt.Errorf("%w: base tensor %q is recorded by two parts, one of them %s", archive.ErrFormat, bt.Name, p.Path())
			}
			base[bt.Name] = bt
		}
		if len(pm.SideFiles) > 0 {
			if side != nil {
				return nil, fmt.Errorf("%w: both %s and %s carry side files", archive.ErrFormat, side.Path(), p.Path())
			}
			side = p
		}
	}
	var total int64
	for _, name := range names {
		o, ok := owner[name]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q is recorded by no part: parts made with different builds of deltacome?", archive.ErrFormat, name)
		}
		total += o.rec.Bytes
	}
	for _, name := range first.Part.BaseTensors {
		bt, ok := base[name]
		if !ok {
			return nil, fmt.Errorf("%w: base tensor %q is recorded by no part", archive.ErrFormat, name)
		}
		m.Base.Tensors = append(m.Base.Tensors, bt)
	}
	m.Base.Fingerprint = archive.Fingerprint(m.Base.Tensors)
	m.Base.Source = first.Base.Source

	w, err := archive.Create(outPath)
	if err != nil {
		return nil, err
	}
	defer w.Abort() // no-op after a successful Commit
	opt.Progress.Begin(len(names), total)
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		o := owner[name]
		for _, b := range o.rec.Blobs {
			if err := w.AddFrom(o.part, b); err != nil {
				return nil, err
			}
		}
		m.Tensors = append(m.Tensors, *o.rec)
		opt.Progress.Tensor(tensorEvent(i, len(names), o.rec))
	}
	if side != nil {
		for _, f := range side.Manifest.SideFiles {
			if err := w.AddFrom(side, f.Blob); err != nil {
				return nil, err
			}
			m.SideFiles = append(m.SideFiles, f)
		}
	}
	n, err := commit(ctx, w, m, outPath, opt.Overwrite, partPaths...)
	if err != nil {
		return nil, err
	}
	return &MergeSummary{Parts: len(parts), Tensors: len(names), OrigBytes: total, ArchiveSize: n}, nil
}

// openPart opens the part file at path, saying plainly when it does not
// exist.
func openPart(path string) (*archive.Reader, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, errorf(ErrInput, "part %s does not exist", path)
	}
	return archive.OpenPart(path)
}

// layoutNames returns the fine-tune's tensor names in the order Compress
// encodes them: shard by shard, each in file order.
func layoutNames(l archive.Layout) ([]string, error) {
	var names []string
	for _, s := range l.Shards {
		infos, _, err := stfile.ParseHeader([]byte(s.Header))
		if err != nil {
			return nil, fmt.Errorf("%w: shard %q: %w", archive.ErrFormat, s.File, err)
		}
		for _, info := range infos {
			names = append(names, info.Name)
		}
	}
	return names, nil
}

// checkSet checks that parts are exactly one complete set and returns them
// in part order. The set is the one most parts belong to (ties: the first
// part's); the others are foreign.
func checkSet(parts []*archive.Reader) ([]*archive.Reader, error) {
	groups := make([]int, len(parts)) // parts[i] belongs with parts[groups[i]]
	size := make(map[int]int)
	for i, p := range parts {
		groups[i] = i
		for j := range i {
			if partDiffers(parts[j].Manifest, p.Manifest) == "" {
				groups[i] = groups[j]
				break
			}
		}
		size[groups[i]]++
	}
	ref := 0
	for g, n := range size {
		if n > size[ref] || n == size[ref] && g < ref {
			ref = g
		}
	}
	refM := parts[ref].Manifest
	e := &PartSetError{Count: refM.Part.Count}
	byIndex := make([][]*archive.Reader, e.Count)
	for i, p := range parts {
		if groups[i] != ref {
			e.Foreign = append(e.Foreign, ForeignPart{Path: p.Path(), Differs: partDiffers(refM, p.Manifest)})
			continue
		}
		k := p.Manifest.Part.Index - 1
		byIndex[k] = append(byIndex[k], p)
	}
	var out []*archive.Reader
	for k, ps := range byIndex {
		switch len(ps) {
		case 0:
			e.Missing = append(e.Missing, k+1)
		case 1:
			out = append(out, ps[0])
		default:
			var paths []string
			for _, p := range ps {
				paths = append(paths, p.Path())
			}
			e.Repeated = append(e.Repeated, paths)
		}
	}
	if len(e.Foreign)+len(e.Missing)+len(e.Repeated) > 0 {
		return nil, e
	}
	return out, nil
}

// partDiffers returns what makes parts a and b belong to different sets,
// or "" when they belong to one.
func partDiffers(a, b *archive.Manifest) string {
	switch {
	case a.Part.Count != b.Part.Count:
		return "part count"
	case a.Tool != b.Tool:
		return "tool"
	case !reflect.DeepEqual(a.Settings, b.Settings):
		return "settings"
	case a.Part.BaseIdentity != b.Part.BaseIdentity || !slices.Equal(a.Part.BaseTensors, b.Part.BaseTensors):
		return "base"
	case a.Part.FineTuneIdentity != b.Part.FineTuneIdentity || !reflect.DeepEqual(a.Layout, b.Layout):
		return "fine-tune"
	}
	return ""
}
