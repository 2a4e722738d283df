package engine

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// smallPair writes a synthetic base / fine-tune pair of folders holding one
// tensor of each storage kind: two projections (low rank), a changed norm
// (xor), an unchanged embedding (same), a tensor only in the fine-tune
// (full), and a config.json side file.
func smallPair(t testing.TB) (base, ft string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(61, 62))
	normal := func(n int, scale float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * scale)
		}
		return x
	}
	bq, bv := normal(64*96, 0.02), normal(32*96, 0.02)
	fq, fv := slices.Clone(bq), slices.Clone(bv)
	for _, w := range [][]float32{fq, fv} {
		for i, d := range normal(len(w), 0.002) {
			w[i] += d
		}
	}
	norm := normal(96, 1)
	fnorm := slices.Clone(norm)
	fnorm[5] += 0.5
	emb := normal(10*96, 0.02)
	base = folder(t, map[string]tensorSpec{
		"model.embed_tokens.weight":              {safetensors.BF16, []uint64{10, 96}, emb},
		"model.layers.0.input_norm.weight":       {safetensors.BF16, []uint64{96}, norm},
		"model.layers.0.self_attn.q_proj.weight": {safetensors.BF16, []uint64{64, 96}, bq},
		"model.layers.0.self_attn.v_proj.weight": {safetensors.BF16, []uint64{32, 96}, bv},
	}, nil)
	ft = folder(t, map[string]tensorSpec{
		"model.embed_tokens.weight":              {safetensors.BF16, []uint64{10, 96}, emb},
		"model.layers.0.input_norm.weight":       {safetensors.BF16, []uint64{96}, fnorm},
		"model.layers.0.self_attn.q_proj.weight": {safetensors.BF16, []uint64{64, 96}, fq},
		"model.layers.0.self_attn.v_proj.weight": {safetensors.BF16, []uint64{32, 96}, fv},
		"score.bias":                             {safetensors.F32, []uint64{3}, []float32{1, 2, 3}},
	}, map[string]string{"config.json": `{"model_type": "llama"}`})
	return base, ft
}

// folder writes a checkpoint folder: model.safetensors and the side files.
func folder(t testing.TB, ts map[string]tensorSpec, side map[string]string) string {
	t.Helper()
	dir := filepath.Dir(writeCheckpoint(t, ts))
	for name, content := range side {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	return dir
}

// readTree returns every file under dir by relative path.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return err
	}))
	return out
}

// badInput reports whether err is one of the sentinels the CLI maps to
// "bad or corrupt input".
func badInput(err error) bool {
	for _, s := range []error{ErrInput, ErrWrongBase, archive.ErrFormat, archive.ErrVersion, archive.ErrChecksum, stfile.ErrFormat} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// compressSmall compresses the small pair in deltacome mode and returns the
// pair, the archive path and its bytes.
func compressSmall(t *testing.T) (base, ft, arch string, raw []byte) {
	t.Helper()
	base, ft = smallPair(t)
	arch = filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(context.Background(), base, ft, arch, deltaOpts(t, 2, "auto"))
	require.NoError(t, err)
	raw, err = os.ReadFile(arch)
	require.NoError(t, err)
	r, err := Inspect(arch)
	require.NoError(t, err)
	kinds := map[string]bool{}
	for _, rec := range r.Manifest.Tensors {
		kinds[rec.Kind] = true
	}
	require.Equal(t, map[string]bool{archive.KindLowRankSym: true, archive.KindXOR: true, archive.KindSame: true, archive.KindFull: true}, kinds,
		"the small pair exercises every kind")
	return base, ft, arch, raw
}

// reconstructBytes writes raw as an archive, reconstructs it onto base and
// returns the output files, or the error. Either way it checks that nothing
// but the output folder is left behind.
func reconstructBytes(t *testing.T, base string, raw []byte) (map[string][]byte, error) {
	t.Helper()
	dir := t.TempDir()
	arch := filepath.Join(dir, "x.dcm")
	require.NoError(t, os.WriteFile(arch, raw, 0o644))
	out := filepath.Join(dir, "out")
	_, err := Reconstruct(context.Background(), base, arch, out, ReconstructOptions{Workers: 2})
	if err != nil {
		assert.Equal(t, []string{"x.dcm"}, fileNames(t, dir), "a failed reconstruct leaves nothing behind")
		return nil, err
	}
	return readTree(t, out), nil
}

// structure lists the archive's structural offsets: the length prefix, the
// header, and the start, middle and end of every blob.
func structure(t *testing.T, raw []byte) (cuts []int, blobs map[string][2]int) {
	t.Helper()
	f, err := stfile.Parse("a", raw)
	require.NoError(t, err)
	d := int(f.DataOffset())
	cuts = []int{0, 4, 8, 9, d / 2, d - 1, d}
	blobs = map[string][2]int{}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		b, e := d+int(info.Offset), d+int(info.Offset+info.Size)
		blobs[n] = [2]int{b, e}
		cuts = append(cuts, b+1, (b+e)/2, e)
	}
	return cuts, blobs
}

func TestReconstructCutArchive(t *testing.T) {
	base, _, _, raw := compressSmall(t)
	cuts, _ := structure(t, raw)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 40 {
		cuts = append(cuts, rng.IntN(len(raw)))
	}
	for _, n := range cuts {
		if n >= len(raw) {
			continue
		}
		_, err := reconstructBytes(t, base, raw[:n])
		require.ErrorIs(t, err, archive.ErrFormat, "cut at %d of %d", n, len(raw))
		assert.Contains(t, err.Error(), "x.dcm", "the error names the archive")
	}
}

// TestReconstructFlippedBlobs flips one bit in the middle of every blob of
// the archive: each is caught by a checksum and reported with the tensor's
// name, never written out.
func TestReconstructFlippedBlobs(t *testing.T) {
	base, _, _, raw := compressSmall(t)
	_, blobs := structure(t, raw)
	require.Len(t, blobs, 2+4+4+1, "xor, full, two low-rank tensors (four blobs each), side file")
	for name, span := range blobs {
		t.Run(name, func(t *testing.T) {
			b := bytes.Clone(raw)
			b[(span[0]+span[1])/2] ^= 0x04
			_, err := reconstructBytes(t, base, b)
			require.ErrorIs(t, err, archive.ErrChecksum)
			tensor, _, _ := strings.Cut(name, "/")
			if tensor == "__side__" {
				tensor = "config.json"
			}
			assert.Contains(t, err.Error(), tensor, "the error names the tensor or file")
		})
	}
}

// TestReconstructFlippedByteAnywhere flips bytes all over the archive, in
// one bit and in all bits: the structural offsets and a seeded sample of
// the rest (every byte of the 16 KB archive takes minutes; it passes too).
// The reconstruction either fails with a bad-input error and leaves nothing,
// or is byte-identical to the intact archive's. A damaged archive never
// gives silently wrong weights.
func TestReconstructFlippedByteAnywhere(t *testing.T) {
	base, _, _, raw := compressSmall(t)
	want, err := reconstructBytes(t, base, raw)
	require.NoError(t, err)
	offsets, _ := structure(t, raw)
	n := 200
	if testing.Short() {
		n = 50
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range n {
		offsets = append(offsets, rng.IntN(len(raw)))
	}
	accepted := 0
	for _, off := range offsets {
		if off >= len(raw) {
			continue
		}
		for _, mask := range []byte{0x01, 0xff} {
			b := bytes.Clone(raw)
			b[off] ^= mask
			got, err := reconstructBytes(t, base, b)
			if err != nil {
				require.True(t, badInput(err), "byte %d ^ %#x: %v", off, mask, err)
				continue
			}
			accepted++
			require.Equal(t, want, got, "byte %d ^ %#x: accepted with other output", off, mask)
		}
	}
	t.Logf("archive of %d bytes: %d flips tried, %d accepted with identical output", len(raw), 2*len(offsets), accepted)
}

func TestReconstructFutureVersion(t *testing.T) {
	base, _, _, raw := compressSmall(t)
	f, err := stfile.Parse("a", raw)
	require.NoError(t, err)
	js := f.Metadata()[archive.MetadataKey]
	future := strings.Replace(js, `"version":1,`, `"version":2,`, 1)
	require.NotEqual(t, js, future)
	var infos []stfile.Info
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		infos = append(infos, info)
	}
	h, err := stfile.EncodeHeader(infos, map[string]string{archive.MetadataKey: future,
		archive.MetadataCRCKey: archive.ManifestCRC(future)})
	require.NoError(t, err)
	var b bytes.Buffer
	require.NoError(t, stfile.WriteHeader(&b, h))
	b.Write(raw[f.DataOffset():])
	_, err = reconstructBytes(t, base, b.Bytes())
	require.ErrorIs(t, err, archive.ErrVersion)
	assert.Contains(t, err.Error(), "upgrade")
}

// TestNonFiniteInputs: NaN and Inf are refused wherever a delta is computed
// (a projection selected for low-rank compression), in either checkpoint,
// naming the tensor; tensors stored bit-exact keep their bits, NaN or not.
func TestNonFiniteInputs(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	proj := "layers.0.q_proj.weight"
	good := []float32{1, 2, 3, 4}
	cases := []struct {
		name      string
		base, ft  []float32
		dt        safetensors.DType
		lossless  bool
		wantError bool
	}{
		{"NaN in fine-tune projection", good, []float32{1, nan, 3, 4}, safetensors.BF16, false, true},
		{"+Inf in fine-tune projection", good, []float32{1, 2, inf, 4}, safetensors.F32, false, true},
		{"-Inf in base projection", []float32{-inf, 2, 3, 4}, []float32{1, 2, 3, 5}, safetensors.F16, false, true},
		{"NaN in base projection", []float32{1, 2, nan, 4}, []float32{1, 2, 3, 5}, safetensors.F32, false, true},
		{"delta overflows f32", []float32{-3e38, 2, 3, 4}, []float32{3e38, 2, 3, 4}, safetensors.F32, false, true},
		{"NaN in a projection, lossless mode", good, []float32{1, nan, 3, 4}, safetensors.BF16, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := writeCheckpoint(t, map[string]tensorSpec{proj: {tc.dt, []uint64{2, 2}, tc.base},
				"norm.weight": {safetensors.BF16, []uint64{2}, []float32{1, 1}}})
			ft := writeCheckpoint(t, map[string]tensorSpec{proj: {tc.dt, []uint64{2, 2}, tc.ft},
				"norm.weight": {safetensors.BF16, []uint64{2}, []float32{nan, inf}}})
			dir := t.TempDir()
			arch := filepath.Join(dir, "a.dcm")
			opt := deltaOpts(t, 1, "auto")
			if tc.lossless {
				opt = losslessOpts()
			}
			_, err := Compress(context.Background(), base, ft, arch, opt)
			if tc.wantError {
				require.ErrorIs(t, err, ErrInput)
				assert.Contains(t, err.Error(), proj)
				assert.Empty(t, fileNames(t, dir), "no output, no temporary files")
				return
			}
			require.NoError(t, err)
			out := filepath.Join(dir, "out")
			_, err = Reconstruct(context.Background(), base, arch, out, ReconstructOptions{})
			require.NoError(t, err)
			assert.Equal(t, tensors(t, ft), tensors(t, filepath.Join(out, "model.safetensors")), "bit-exact, NaN included")
		})
	}
	// NaN in a tensor that is not a projection is stored bit-exact in
	// deltacome mode too.
	base := writeCheckpoint(t, map[string]tensorSpec{"norm.weight": {safetensors.BF16, []uint64{2}, []float32{1, 1}}})
	ft := writeCheckpoint(t, map[string]tensorSpec{"norm.weight": {safetensors.BF16, []uint64{2}, []float32{nan, -inf}}})
	arch := filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(context.Background(), base, ft, arch, deltaOpts(t, 16, "auto"))
	require.NoError(t, err)
}

// TestCompressFailureKeepsOlderOut: a compress that fails on bad input
// leaves an older archive at OUT untouched and no temporary files.
func TestCompressFailureKeepsOlderOut(t *testing.T) {
	const proj = "layers.0.q_proj.weight"
	base := writeCheckpoint(t, map[string]tensorSpec{"a": {safetensors.F32, []uint64{2}, []float32{1, 2}},
		proj: {safetensors.F32, []uint64{2, 2}, []float32{1, 2, 3, 4}}})
	ft := writeCheckpoint(t, map[string]tensorSpec{"a": {safetensors.F32, []uint64{2}, []float32{1, 3}},
		proj: {safetensors.F32, []uint64{2, 2}, []float32{1, float32(math.NaN()), 3, 4}}})
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	require.NoError(t, os.WriteFile(arch, []byte("older archive"), 0o644))
	opt := deltaOpts(t, 16, "auto")
	opt.Overwrite = true
	_, err := Compress(context.Background(), base, ft, arch, opt)
	require.ErrorIs(t, err, ErrInput)
	assert.Equal(t, []string{"a.dcm"}, fileNames(t, dir))
	got, err := os.ReadFile(arch)
	require.NoError(t, err)
	assert.Equal(t, "older archive", string(got))
}

// cancelAfter is a Progress that cancels its context after n tensors.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Begin(int, int64) {}
func (c *cancelAfter) Warn(Warning)     {}
func (c *cancelAfter) Tensor(Event) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
}

// TestCancelMidway cancels compress and reconstruct after their first
// tensor, as Ctrl-C does: both return context.Canceled and leave no output
// and no temporary files; an older OUT stays as it was.
func TestCancelMidway(t *testing.T) {
	base, ft, arch, raw := compressSmall(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "b.dcm")
	require.NoError(t, os.WriteFile(out, []byte("older archive"), 0o644))
	for _, w := range []int{1, 2} {
		ctx, cancel := context.WithCancel(context.Background())
		opt := deltaOpts(t, 2, "auto")
		opt.Workers, opt.Progress, opt.Overwrite = w, &cancelAfter{n: 1, cancel: cancel}, true
		_, err := Compress(ctx, base, ft, out, opt)
		cancel()
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, []string{"b.dcm"}, fileNames(t, dir), "workers %d", w)
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		assert.Equal(t, "older archive", string(got))

		ctx, cancel = context.WithCancel(context.Background())
		rdir := filepath.Join(dir, "out")
		_, err = Reconstruct(ctx, base, arch, rdir, ReconstructOptions{Workers: w, Progress: &cancelAfter{n: 1, cancel: cancel}})
		cancel()
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, []string{"b.dcm"}, fileNames(t, dir), "workers %d", w)
	}
	got, err := os.ReadFile(arch)
	require.NoError(t, err)
	assert.Equal(t, raw, got, "the archive read is untouched")
}

// TestDeterministicRuns: two separate runs, and runs with 1 and 2 workers,
// give byte-identical archives in both modes.
func TestDeterministicRuns(t *testing.T) {
	base, ft := smallPair(t)
	for _, mode := range []string{ModeLossless, ModeDeltaCoMe} {
		t.Run(mode, func(t *testing.T) {
			var archives [][]byte
			for _, w := range []int{1, 2, 1, 2} {
				opt := deltaOpts(t, 2, "auto")
				if mode == ModeLossless {
					opt = losslessOpts()
				}
				opt.Workers = w
				arch := filepath.Join(t.TempDir(), "a.dcm")
				_, err := Compress(context.Background(), base, ft, arch, opt)
				require.NoError(t, err)
				b, err := os.ReadFile(arch)
				require.NoError(t, err)
				archives = append(archives, b)
			}
			for i := 1; i < len(archives); i++ {
				assert.True(t, bytes.Equal(archives[0], archives[i]), "run %d differs from run 0", i)
			}
		})
	}
}
