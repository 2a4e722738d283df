package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// ReconstructOptions configures Reconstruct.
type ReconstructOptions struct {
	// Force accepts a base whose fingerprint differs from the archive's.
	Force bool
	// Workers bounds the tensors processed at once; < 1 sizes the pool from
	// the cores and the largest tensor's working set.
	Workers int
	// Progress receives per-tensor events; nil means none.
	Progress Progress
}

// ReconstructSummary totals a finished Reconstruct.
type ReconstructSummary struct {
	Files   []string // written file names, shards then side files
	Tensors int
	Bytes   int64 // tensor bytes written
}

// Reconstruct writes the fine-tune stored in the archive at archivePath,
// applied to BASE (basePath), as a checkpoint in the folder outDir: the same
// shard files, headers and side files as the fine-tune. outDir must not
// exist or be empty; it appears only when complete.
func Reconstruct(ctx context.Context, basePath, archivePath, outDir string, opt ReconstructOptions) (*ReconstructSummary, error) {
	if opt.Progress == nil {
		opt.Progress = NoProgress{}
	}
	if err := checkOutDir(outDir, basePath, archivePath); err != nil {
		return nil, err
	}
	ar, err := openArchive(archivePath)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	m := ar.Manifest
	base, err := openCheckpoint("base", basePath)
	if err != nil {
		return nil, err
	}
	defer base.Close()

	if err := checkBaseLayout(base, m, opt.Force); err != nil {
		return nil, err
	}
	items, headers, err := planShards(m)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", archivePath, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(outDir)), "."+filepath.Base(outDir)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create output: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()

	baseRec := make(map[string]archive.BaseTensor, len(m.Base.Tensors))
	for _, bt := range m.Base.Tensors {
		baseRec[bt.Name] = bt
	}
	var total int64
	for _, it := range items {
		total += it.rec.Bytes
	}
	opt.Progress.Begin(len(items), total)

	sum := &ReconstructSummary{Tensors: len(items)}
	shards, err := createShards(tmp, m, headers, items)
	if err != nil {
		return nil, err
	}
	// Each worker decodes a tensor and writes it into its shard; its
	// output buffer, taken from bufs, goes back once written.
	var bufs buffers
	work := func(ctx context.Context, i int) (int64, error) {
		var buf []byte
		alloc := func(n int64) []byte {
			buf = bufs.get(n)
			return buf
		}
		data, err := decodeTensor(ar, base, items[i].rec, baseRec, m, opt.Force, alloc)
		if err == nil {
			err = shards.writeTensor(items[i], data)
		}
		if buf != nil {
			bufs.put(buf)
		}
		base.Release(items[i].rec.Name) // data may alias it (kind same)
		if items[i].rec.Bytes >= collectAfter {
			// The tensor's decoded factors are garbage now, and the next
			// large tensor allocates as much at once, faster than the
			// collector's pacing reacts: collect before it does.
			runtime.GC()
		}
		return int64(len(data)), err
	}
	consume := func(i int, n int64) error {
		shards.written(items[i].shard)
		sum.Bytes += n
		rec := items[i].rec
		opt.Progress.Tensor(Event{Index: i, Total: len(items), Name: rec.Name, Shape: rec.Shape, DType: rec.DType,
			Kind: rec.Kind, OrigBytes: rec.Bytes, StoredBytes: n})
		return nil
	}
	n := opt.Workers
	if n < 1 {
		n = reconstructWorkers(m)
	}
	// The same soft memory limit as compress's default: without it the
	// collector lets the heap grow to twice the live tensors (2.6 GB for
	// a 70B-class layer, whose live set is 1.2 GB).
	defer setMemoryLimit(DefaultMaxMemory(runtime.GOMAXPROCS(0)))()
	if werr := ordered(ctx, len(items), n, work, consume); werr != nil {
		shards.abort()
		return nil, werr
	}
	if err := shards.finish(); err != nil {
		return nil, err
	}
	for _, s := range m.Layout.Shards {
		sum.Files = append(sum.Files, s.File)
	}
	for _, f := range m.SideFiles {
		if err := writeSideFile(ar, tmp, f); err != nil {
			return nil, err
		}
		sum.Files = append(sum.Files, f.Name)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.Remove(outDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("replace empty %s: %w", outDir, err)
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return nil, fmt.Errorf("create output %s: %w", outDir, err)
	}
	ok = true
	return sum, nil
}

// checkOutDir refuses an outDir whose parent is not a writable folder,
// that is or lies inside one of the inputs (checkNotInput), or that exists
// and is not an empty folder.
func checkOutDir(outDir string, inputs ...string) error {
	if err := checkParent(outDir); err != nil {
		return err
	}
	if err := checkNotInput(outDir, "OUTDIR", inputs...); err != nil {
		return err
	}
	st, err := os.Stat(outDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return errorf(ErrExists, "%s: %v", outDir, pathErr(err))
	case !st.IsDir():
		return errorf(ErrExists, "%s is a file; OUTDIR is the folder the checkpoint is written to", outDir)
	}
	entries, err := os.ReadDir(outDir)
	switch {
	case err != nil:
		return errorf(ErrExists, "%s is not a usable folder: %v", outDir, pathErr(err))
	case len(entries) > 0:
		return errorf(ErrExists, "%s is not empty; give a new folder, or empty it first", outDir)
	}
	return nil
}

// checkBaseLayout compares the base's tensor names, dtypes and shapes with
// the archive's record, a check that reads no tensor bytes. Byte-level
// agreement is verified tensor by tensor as they are read.
func checkBaseLayout(base *checkpoint.Checkpoint, m *archive.Manifest, force bool) error {
	if force {
		return nil
	}
	names := base.Names()
	same := len(names) == len(m.Base.Tensors)
	if same {
		for _, bt := range m.Base.Tensors {
			t, ok := base.Tensor(bt.Name)
			if !ok || t.DType.String() != bt.DType || !slices.Equal(t.Shape, bt.Shape) {
				same = false
				break
			}
		}
	}
	if same {
		return nil
	}
	return wrongBase(base, m, "its tensor names, dtypes or shapes differ")
}

// wrongBase builds the error for a base that does not match the archive m:
// the base it was made against (its source name and fingerprint) first,
// then the given one's fingerprint. A given base that holds the archive's
// own fine-tune (the arguments mixed up) is named as such, without the
// --force that would only garble it. Hashing the whole given base happens
// only on this path.
func wrongBase(base *checkpoint.Checkpoint, m *archive.Manifest, why string) error {
	got, err := fingerprintBase(context.Background(), base, nil, nil)
	fp := got.Fingerprint
	if err != nil {
		fp = "unknown (" + err.Error() + ")"
	}
	want := m.Base.Fingerprint
	if m.Base.Source != "" {
		want = fmt.Sprintf("%q (%s)", m.Base.Source, m.Base.Fingerprint)
	}
	if isFineTune(got.Tensors, m) {
		return errorf(ErrWrongBase, "%s is the fine-tune stored in this archive, not its base: give the base it was made against, %s", base.Path(), want)
	}
	return errorf(ErrWrongBase, "%s is not the base this archive was made against (%s): that was %s, and %s has fingerprint %s. "+
		"Give that base; --force applies the archive anyway, which gives wrong weights unless this base holds the same values (re-saved, for instance)",
		base.Path(), why, want, base.Path(), fp)
}

// isFineTune reports whether the hashed tensors are the archive's
// fine-tune: every tensor the archive stores as different from its base
// (at least one) has the fine-tune's recorded SHA-256.
func isFineTune(tensors []archive.BaseTensor, m *archive.Manifest) bool {
	sha := make(map[string]string, len(tensors))
	for _, t := range tensors {
		sha[t.Name] = t.SHA256
	}
	changed := 0
	for _, rec := range m.Tensors {
		if rec.Kind == archive.KindSame {
			continue
		}
		if sha[rec.Name] != rec.SHA256 {
			return false
		}
		changed++
	}
	return changed > 0
}

type item struct {
	rec   *archive.Tensor
	shard int
	// offset is the tensor's first byte in its shard's data region.
	offset int64
}

// planShards lists the tensors in output order (shard by shard, in each
// shard's file order) and checks that the recorded shard headers agree with
// the tensor records.
func planShards(m *archive.Manifest) ([]item, [][]byte, error) {
	byName := make(map[string]*archive.Tensor, len(m.Tensors))
	for i := range m.Tensors {
		byName[m.Tensors[i].Name] = &m.Tensors[i]
	}
	var items []item
	headers := make([][]byte, len(m.Layout.Shards))
	for si, s := range m.Layout.Shards {
		infos, _, err := stfile.ParseHeader([]byte(s.Header))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: shard %s: recorded header: %w", archive.ErrFormat, s.File, err)
		}
		for _, info := range infos {
			rec, ok := byName[info.Name]
			if !ok || rec.Shard != si || rec.DType != info.DType.String() || !slices.Equal(rec.Shape, info.Shape) || rec.Bytes != info.Size {
				return nil, nil, fmt.Errorf("%w: shard %s: tensor %q in the header disagrees with its record", archive.ErrFormat, s.File, info.Name)
			}
			items = append(items, item{rec: rec, shard: si, offset: info.Offset})
		}
		headers[si] = []byte(s.Header)
	}
	if len(items) != len(m.Tensors) {
		return nil, nil, fmt.Errorf("%w: %d tensors recorded, shard headers hold %d", archive.ErrFormat, len(m.Tensors), len(items))
	}
	return items, headers, nil
}

// decodeTensor returns the fine-tune bytes of one tensor, decoded by its
// kind's entry of the storage table. Bit-exact kinds are checked against
// their recorded SHA-256, except when forced onto another base, where they
// cannot match.
//
// Kinds that compute their output write it into a buffer from alloc; the
// others return the base's or the archive's bytes.
func decodeTensor(ar *archive.Reader, base *checkpoint.Checkpoint, rec *archive.Tensor, baseRec map[string]archive.BaseTensor, m *archive.Manifest, force bool, alloc func(n int64) []byte) ([]byte, error) {
	var bdata []byte
	var bdt safetensors.DType
	if k, ok := storage.Lookup(rec.Kind); ok && k.Base {
		bt, ok := base.Tensor(rec.Name)
		if !ok {
			return nil, errorf(ErrWrongBase, "tensor %q is stored as a delta but %s has no such tensor", rec.Name, base.Path())
		}
		var err error
		if bdata, err = base.Data(rec.Name); err != nil {
			return nil, errorf(ErrInput, "base: %w", err)
		}
		bdt = bt.DType
		if !slices.Equal(bt.Shape, rec.Shape) {
			return nil, errorf(ErrWrongBase, "tensor %q: shape %v in base, %v in archive", rec.Name, bt.Shape, rec.Shape)
		}
	}
	// The base's checksum is computed beside the decoding, on a core of its
	// own, rather than before it: hashing is serial, the decoding parallel.
	// Nothing decoded leaves here before the checksum agrees.
	baseOK := make(chan bool, 1)
	if br, ok := baseRec[rec.Name]; bdata != nil && !force {
		go func() { baseOK <- ok && br.SHA256 == sha256Hex(bdata) }()
	} else {
		baseOK <- true
	}
	out, err := storage.DecodeTensor(ar, rec, bdata, bdt, !force, alloc)
	if !<-baseOK {
		return nil, wrongBase(base, m, fmt.Sprintf("tensor %q has other bytes", rec.Name))
	}
	if errors.Is(err, storage.ErrBase) {
		return nil, errorf(ErrWrongBase, "%w", err)
	}
	return out, err
}

// buffers recycles decodeTensor's output buffers between tensors, sparing
// the page faults of fresh memory (a 7B projection's output is 90 MB). It
// holds at most as many buffers as were in flight at once.
type buffers struct {
	mu   sync.Mutex
	free [][]byte
}

// get returns a buffer of n bytes: the smallest free one large enough, or a
// new one. Its contents are unspecified.
func (b *buffers) get(n int64) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	best := -1
	for i, f := range b.free {
		if int64(cap(f)) >= n && (best < 0 || cap(f) < cap(b.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return make([]byte, n)
	}
	f := b.free[best]
	b.free = slices.Delete(b.free, best, best+1)
	return f[:n]
}

// newBuffer is decodeTensor's alloc where nothing is recycled.
func newBuffer(n int64) []byte { return make([]byte, n) }

// put returns p to b for reuse.
func (b *buffers) put(p []byte) {
	b.mu.Lock()
	b.free = append(b.free, p)
	b.mu.Unlock()
}

// collectAfter is the output size from which a tensor's decoding is
// followed by a collection (a few milliseconds: the heap is mostly
// pointer-free float32 slices): a 70B-class MLP matrix's factors at ratio 8
// are 800 MB, allocated at once.
const collectAfter = 64 << 20

// shardFiles holds the output shards open while the workers write each
// tensor at its recorded offset (WriteAt, from any goroutine): the copy of
// the decoded bytes into the page cache, 400 MB for a 7B layer, runs on
// the workers in parallel instead of one after another on the goroutine
// that collects them. A shard is synced and closed, in the background, once
// its last tensor has been written; a shard holding no tensors is its
// header alone.
type shardFiles struct {
	files []*os.File
	start []int64 // offset of each shard's data region
	left  []int   // tensors not yet written, per shard
	wg    sync.WaitGroup
	errs  []error // of the background closes, per shard
}

// createShards creates every shard of items' layout in dir and writes its
// header.
func createShards(dir string, m *archive.Manifest, headers [][]byte, items []item) (*shardFiles, error) {
	n := len(m.Layout.Shards)
	s := &shardFiles{files: make([]*os.File, n), start: make([]int64, n), left: make([]int, n), errs: make([]error, n)}
	for _, it := range items {
		s.left[it.shard]++
	}
	for si, sh := range m.Layout.Shards {
		f, err := os.Create(filepath.Join(dir, sh.File))
		if err != nil {
			s.abort()
			return nil, fmt.Errorf("create shard: %w", err)
		}
		s.files[si] = f
		var hdr bytes.Buffer
		if err := stfile.WriteHeader(&hdr, headers[si]); err != nil {
			s.abort()
			return nil, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		if _, err := f.Write(hdr.Bytes()); err != nil {
			s.abort()
			return nil, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		s.start[si] = int64(hdr.Len())
		if s.left[si] == 0 {
			s.closeInBackground(si)
		}
	}
	return s, nil
}

// writeTensor writes data, the bytes of it, at its place in its shard and
// starts their writeback to disk (startWriteback). It may be called from
// any goroutine, for tensors in any order.
func (s *shardFiles) writeTensor(it item, data []byte) error {
	f := s.files[it.shard]
	off := s.start[it.shard] + it.offset
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	startWriteback(f, off, int64(len(data)))
	return nil
}

// written records that one tensor of shard si has been written; after the
// shard's last one, the shard is synced and closed in the background. It is
// called from one goroutine.
func (s *shardFiles) written(si int) {
	if s.left[si]--; s.left[si] == 0 {
		s.closeInBackground(si)
	}
}

func (s *shardFiles) closeInBackground(si int) {
	f := s.files[si]
	s.files[si] = nil
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			s.errs[si] = fmt.Errorf("write %s: %w", f.Name(), err)
		}
	}()
}

// finish waits for the background closes and returns their errors.
func (s *shardFiles) finish() error {
	s.wg.Wait()
	return errors.Join(s.errs...)
}

// abort closes every shard still open, without syncing, and waits for the
// background closes: the output is being discarded.
func (s *shardFiles) abort() {
	for _, f := range s.files {
		if f != nil {
			_ = f.Close()
		}
	}
	s.wg.Wait()
}

func writeSideFile(ar *archive.Reader, dir string, f archive.SideFile) error {
	data, err := ar.Blob(f.Blob)
	if err != nil {
		return fmt.Errorf("side file %q: %w", f.Name, err)
	}
	if sha256Hex(data) != f.SHA256 {
		return fmt.Errorf("%w: side file %q: bytes do not match the recorded SHA-256", archive.ErrChecksum, f.Name)
	}
	if err := os.WriteFile(filepath.Join(dir, f.Name), data, 0o644); err != nil {
		return fmt.Errorf("write side file: %w", err)
	}
	return nil
}
