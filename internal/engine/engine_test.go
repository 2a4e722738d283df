package engine

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// The bundled real pair: bf16, Llama names, 4 layers.
var (
	tinyBase = filepath.Join("..", "..", "testdata", "tiny-llama", "base")
	tinyFT   = filepath.Join("..", "..", "testdata", "tiny-llama", "math")
)

func losslessOpts() CompressOptions {
	return CompressOptions{Mode: ModeLossless, Tool: "test"}
}

func deltaOpts(t testing.TB, ratio float64, schedule string) CompressOptions {
	s, err := alloc.ParseSchedule(schedule)
	require.NoError(t, err)
	sel, err := NewSelector(nil, nil)
	require.NoError(t, err)
	// compress's defaults: the symmetric grid, a scale per vector, no
	// refit.
	return CompressOptions{Mode: ModeDeltaCoMe, Ratio: ratio, Schedule: s, Refit: svdquant.DefaultRefit, Select: sel, Tool: "test"}
}

// tensors reads every tensor of a checkpoint into a map of copies.
func tensors(t *testing.T, path string) map[string][]byte {
	t.Helper()
	c, err := checkpoint.Open(path)
	require.NoError(t, err)
	defer c.Close()
	out := make(map[string][]byte)
	for _, n := range c.Names() {
		d, err := c.Data(n)
		require.NoError(t, err)
		out[n] = bytes.Clone(d)
	}
	return out
}

func fileNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func shardedCopy(t *testing.T, src string, n int) string {
	t.Helper()
	c, err := checkpoint.Open(src)
	require.NoError(t, err)
	defer c.Close()
	dir := t.TempDir()
	require.NoError(t, checkpoint.WriteShardedCopy(c, dir, n))
	return dir
}

func TestLosslessRoundTrip(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name     string
		base, ft func(t *testing.T) string
	}{
		{"folders", func(*testing.T) string { return tinyBase }, func(*testing.T) string { return tinyFT }},
		{"single files", func(*testing.T) string { return filepath.Join(tinyBase, "model.safetensors") },
			func(*testing.T) string { return filepath.Join(tinyFT, "model.safetensors") }},
		{"base 2 shards, ft 3 shards", func(t *testing.T) string { return shardedCopy(t, tinyBase, 2) },
			func(t *testing.T) string { return shardedCopy(t, tinyFT, 3) }},
		{"single-file base, sharded ft", func(*testing.T) string { return filepath.Join(tinyBase, "model.safetensors") },
			func(t *testing.T) string { return shardedCopy(t, tinyFT, 2) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, ft := tc.base(t), tc.ft(t)
			dir := t.TempDir()
			arch := filepath.Join(dir, "a.dcm")
			sum, err := Compress(ctx, base, ft, arch, losslessOpts())
			require.NoError(t, err)
			ftSize := int64(0)
			for _, d := range tensors(t, ft) {
				ftSize += int64(len(d))
			}
			assert.Less(t, sum.ArchiveSize, ftSize, "lossless archive must be smaller than the fine-tune's tensors")

			// The archive opens in the safetensors library on its own.
			raw, err := os.ReadFile(arch)
			require.NoError(t, err)
			st, err := safetensors.Deserialize(raw)
			require.NoError(t, err)
			assert.NotEmpty(t, st.Names())

			out := filepath.Join(dir, "out")
			_, err = Reconstruct(ctx, base, arch, out, ReconstructOptions{})
			require.NoError(t, err)

			want, got := tensors(t, ft), tensors(t, outPath(t, ft, out))
			require.Equal(t, len(want), len(got))
			for n, w := range want {
				assert.True(t, bytes.Equal(w, got[n]), "tensor %s differs", n)
			}
			// Shard files (and, for folders, side files) come back byte for byte.
			if fi, err := os.Stat(ft); err == nil && fi.IsDir() {
				assert.ElementsMatch(t, fileNames(t, ft), fileNames(t, out))
				for _, f := range fileNames(t, ft) {
					a, err := os.ReadFile(filepath.Join(ft, f))
					require.NoError(t, err)
					b, err := os.ReadFile(filepath.Join(out, f))
					require.NoError(t, err)
					assert.True(t, bytes.Equal(a, b), "file %s differs", f)
				}
			} else {
				assert.Equal(t, []string{filepath.Base(ft)}, fileNames(t, out))
				a, _ := os.ReadFile(ft)
				b, _ := os.ReadFile(filepath.Join(out, filepath.Base(ft)))
				assert.True(t, bytes.Equal(a, b))
			}
		})
	}
}

// outPath is where the reconstruction of ft lives inside out.
func outPath(t *testing.T, ft, out string) string {
	fi, err := os.Stat(ft)
	require.NoError(t, err)
	if fi.IsDir() {
		return out
	}
	return filepath.Join(out, filepath.Base(ft))
}

func TestWrongBaseRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, err := Compress(ctx, tinyBase, tinyFT, arch, losslessOpts())
	require.NoError(t, err)

	// Same names, dtypes and shapes, other bytes: caught tensor by tensor.
	out := filepath.Join(dir, "out")
	_, err = Reconstruct(ctx, tinyFT, arch, out, ReconstructOptions{Workers: 2})
	require.ErrorIs(t, err, ErrWrongBase)
	assert.Contains(t, err.Error(), "sha256:")
	assert.NoDirExists(t, out)
	assert.Equal(t, []string{"a.dcm"}, fileNames(t, dir), "nothing left behind")

	// Another layout: caught before any tensor is read.
	other := writeCheckpoint(t, map[string]tensorSpec{"x": {safetensors.F32, []uint64{2}, []float32{1, 2}}})
	_, err = Reconstruct(ctx, other, arch, out, ReconstructOptions{})
	require.ErrorIs(t, err, ErrWrongBase)
	assert.NoDirExists(t, out)

	// --force applies anyway.
	_, err = Reconstruct(ctx, tinyFT, arch, out, ReconstructOptions{Force: true})
	require.NoError(t, err)
	assert.DirExists(t, out)
}

type tensorSpec struct {
	dt    safetensors.DType
	shape []uint64
	vals  []float32
}

// writeCheckpoint writes a single-file checkpoint of the given tensors (in
// name order) and returns its path.
func writeCheckpoint(t testing.TB, ts map[string]tensorSpec) string {
	t.Helper()
	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	slices.Sort(names)
	var infos []stfile.Info
	var data []byte
	for _, n := range names {
		s := ts[n]
		b := make([]byte, len(s.vals)*int(s.dt.Size()))
		require.NoError(t, dtype.Encode(b, s.vals, s.dt))
		infos = append(infos, stfile.Info{Name: n, DType: s.dt, Shape: s.shape, Offset: int64(len(data)), Size: int64(len(b))})
		data = append(data, b...)
	}
	header, err := stfile.EncodeHeader(infos, nil)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, stfile.WriteHeader(&buf, header))
	buf.Write(data)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

func TestTensorsOnlyInOneSide(t *testing.T) {
	ctx := context.Background()
	base := writeCheckpoint(t, map[string]tensorSpec{
		"a.weight":      {safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 4}},
		"only_in_base":  {safetensors.F32, []uint64{1}, []float32{7}},
		"same.weight":   {safetensors.F16, []uint64{2}, []float32{5, 6}},
		"retyped.scale": {safetensors.F32, []uint64{2}, []float32{1, 1}},
	})
	ft := writeCheckpoint(t, map[string]tensorSpec{
		"a.weight":      {safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 5}},
		"only_in_ft":    {safetensors.F32, []uint64{3}, []float32{1, 2, 3}},
		"same.weight":   {safetensors.F16, []uint64{2}, []float32{5, 6}},
		"retyped.scale": {safetensors.BF16, []uint64{2}, []float32{1, 1}},
	})
	arch := filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(ctx, base, ft, arch, losslessOpts())
	require.NoError(t, err)

	r, err := Inspect(arch)
	require.NoError(t, err)
	kinds := map[string]string{}
	for _, rec := range r.Manifest.Tensors {
		kinds[rec.Name] = rec.Kind
	}
	assert.Equal(t, map[string]string{"a.weight": archive.KindXOR, "only_in_ft": archive.KindFull,
		"same.weight": archive.KindSame, "retyped.scale": archive.KindFull}, kinds)
	assert.Len(t, r.Manifest.Base.Tensors, 4, "base-only tensors are part of the fingerprint")

	out := filepath.Join(t.TempDir(), "out")
	_, err = Reconstruct(ctx, base, arch, out, ReconstructOptions{})
	require.NoError(t, err)
	want, got := tensors(t, ft), tensors(t, filepath.Join(out, "model.safetensors"))
	assert.Equal(t, want, got)
}

// TestShapeChangeStoredWhole: a tensor whose shape changed is stored whole
// with a warning, even one of the same byte length (which must not be taken
// for the base's bytes); a selected projection whose shape changed is
// refused with a way out.
func TestShapeChangeStoredWhole(t *testing.T) {
	ctx := context.Background()
	const proj = "layers.0.q_proj.weight"
	base := writeCheckpoint(t, map[string]tensorSpec{
		"w":                    {safetensors.F32, []uint64{2}, []float32{1, 2}},
		"model.embed.weight":   {safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 4}},
		"layers.0.norm.weight": {safetensors.BF16, []uint64{2}, []float32{1, 1}},
	})
	ft := writeCheckpoint(t, map[string]tensorSpec{
		"w":                    {safetensors.F32, []uint64{1, 2}, []float32{1, 2}},
		"model.embed.weight":   {safetensors.BF16, []uint64{3, 2}, []float32{1, 2, 3, 4, 5, 6}},
		"layers.0.norm.weight": {safetensors.BF16, []uint64{2}, []float32{1, 1}},
	})
	for _, opt := range []CompressOptions{losslessOpts(), deltaOpts(t, 16, "auto")} {
		t.Run(opt.Mode, func(t *testing.T) {
			arch := filepath.Join(t.TempDir(), "a.dcm")
			sum, err := Compress(ctx, base, ft, arch, opt)
			require.NoError(t, err)
			var changed []string
			for _, w := range sum.Warnings {
				if w.Code == WarnShapeChanged {
					changed = append(changed, w.Subject)
				}
				if w.Subject == "model.embed.weight" {
					assert.Contains(t, w.Message, "[3 2] in the fine-tune and [2 2] in the base")
				}
			}
			assert.ElementsMatch(t, []string{"w", "model.embed.weight"}, changed)
			p, err := Plan(base, ft, opt)
			require.NoError(t, err)
			assert.Equal(t, sum.Warnings, p.Warnings, "the plan warns alike")

			r, err := Inspect(arch)
			require.NoError(t, err)
			for _, rec := range r.Manifest.Tensors {
				if rec.Name != "layers.0.norm.weight" {
					assert.Equal(t, archive.KindFull, rec.Kind, rec.Name)
				}
			}
			out := filepath.Join(t.TempDir(), "out")
			_, err = Reconstruct(ctx, base, arch, out, ReconstructOptions{})
			require.NoError(t, err)
			assert.Equal(t, tensors(t, ft), tensors(t, filepath.Join(out, "model.safetensors")))
			rep, err := Verify(ctx, base, ft, arch, VerifyOptions{})
			require.NoError(t, err)
			assert.NoError(t, rep.Check(0))
		})
	}

	base = writeCheckpoint(t, map[string]tensorSpec{proj: {safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 4}}})
	ft = writeCheckpoint(t, map[string]tensorSpec{proj: {safetensors.BF16, []uint64{3, 2}, []float32{1, 2, 3, 4, 5, 6}}})
	arch := filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(ctx, base, ft, arch, deltaOpts(t, 16, "auto"))
	require.ErrorIs(t, err, ErrInput)
	assert.Contains(t, err.Error(), `--exclude '^layers\.0\.q_proj\.weight$'`)
	assert.NoFileExists(t, arch)
	assert.Empty(t, fileNames(t, filepath.Dir(arch)), "no temporary files left")
	_, err = Plan(base, ft, deltaOpts(t, 16, "auto"))
	assert.ErrorIs(t, err, ErrInput)

	opt := deltaOpts(t, 16, "auto")
	opt.Select, err = NewSelector(nil, []string{`^layers\.0\.q_proj\.weight$`})
	require.NoError(t, err)
	_, err = Compress(ctx, base, ft, arch, opt)
	assert.NoError(t, err, "the way out the message gives")
}

func TestNonFiniteDeltaRefused(t *testing.T) {
	nan := float32(math.NaN())
	base := writeCheckpoint(t, map[string]tensorSpec{"layers.0.q_proj.weight": {safetensors.F32, []uint64{2, 2}, []float32{1, 2, 3, 4}}})
	ft := writeCheckpoint(t, map[string]tensorSpec{"layers.0.q_proj.weight": {safetensors.F32, []uint64{2, 2}, []float32{1, nan, 3, 4}}})
	arch := filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(context.Background(), base, ft, arch, deltaOpts(t, 2, "auto"))
	require.ErrorIs(t, err, ErrInput)
	assert.Contains(t, err.Error(), "layers.0.q_proj.weight")
	assert.NoFileExists(t, arch)
}

func TestDeterministicAcrossWorkers(t *testing.T) {
	ctx := context.Background()
	calibrated := deltaOpts(t, 16, "auto")
	calibrated.Calibration = writeStats(t, calibSites(t, tinyFT, 1024, 5), 1024, "")
	for name, opt := range map[string]CompressOptions{"data-free": deltaOpts(t, 16, "auto"), "calibrated": calibrated} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			var archives [][]byte
			for _, w := range []int{1, 2, 3} {
				opt.Workers, opt.Overwrite = w, true
				arch := filepath.Join(dir, "a.dcm")
				_, err := Compress(ctx, tinyBase, tinyFT, arch, opt)
				require.NoError(t, err)
				b, err := os.ReadFile(arch)
				require.NoError(t, err)
				archives = append(archives, b)
			}
			assert.True(t, bytes.Equal(archives[0], archives[1]), "workers 1 vs 2")
			assert.True(t, bytes.Equal(archives[0], archives[2]), "workers 1 vs 3")
		})
	}
}

func TestOutDirNotEmptyRefused(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, err := Compress(context.Background(), tinyBase, tinyFT, arch, losslessOpts())
	require.NoError(t, err)
	out := filepath.Join(dir, "out")
	require.NoError(t, os.MkdirAll(out, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(out, "keep"), []byte("x"), 0o644))
	_, err = Reconstruct(context.Background(), tinyBase, arch, out, ReconstructOptions{})
	require.ErrorIs(t, err, ErrExists)
	assert.Equal(t, []string{"keep"}, fileNames(t, out))
}
