package delta_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/delta"
)

var (
	tinyBase = filepath.Join("..", "..", "testdata", "tiny-llama", "base")
	tinyFT   = filepath.Join("..", "..", "testdata", "tiny-llama", "math")
)

// TestMatchesReconstruct compresses the bundled tiny pair with each method
// and losslessly, reconstructs it as `deltacome reconstruct` does, and
// checks that Tensor gives the same bytes for every tensor, and Float32
// their values.
func TestMatchesReconstruct(t *testing.T) {
	sched, err := alloc.ParseSchedule("auto")
	require.NoError(t, err)
	sel, err := engine.NewSelector(nil, nil)
	require.NoError(t, err)
	cases := []struct {
		name string
		opt  engine.CompressOptions
	}{
		{"lossless", engine.CompressOptions{Mode: engine.ModeLossless}},
	}
	for _, m := range engine.Methods {
		cases = append(cases, struct {
			name string
			opt  engine.CompressOptions
		}{m, engine.CompressOptions{Mode: engine.ModeDeltaCoMe, Method: m, Ratio: 16, Schedule: sched, GroupSize: 128, Select: sel}})
	}
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			arch, out := filepath.Join(dir, "a.dcm"), filepath.Join(dir, "out")
			c.opt.Tool = "test"
			_, err := engine.Compress(ctx, tinyBase, tinyFT, arch, c.opt)
			require.NoError(t, err)
			_, err = engine.Reconstruct(ctx, tinyBase, arch, out, engine.ReconstructOptions{})
			require.NoError(t, err)
			want, err := checkpoint.Open(out)
			require.NoError(t, err)
			defer want.Close()

			r, err := delta.Open(tinyBase, arch)
			require.NoError(t, err)
			defer r.Close()
			require.ElementsMatch(t, want.Names(), r.Names())
			kinds := map[string]bool{}
			for _, name := range r.Names() {
				got, err := r.Tensor(name)
				require.NoError(t, err)
				wb, err := want.Data(name)
				require.NoError(t, err)
				assert.Equal(t, wb, got, name)

				wt, _ := want.Tensor(name)
				values, err := r.Float32(name)
				require.NoError(t, err)
				wv := make([]float32, len(wb)/int(wt.DType.Size()))
				require.NoError(t, dtype.Decode(wv, wb, wt.DType))
				assert.Equal(t, wv, values, name)
			}
			for _, rec := range r.Manifest().Tensors {
				kinds[rec.Kind] = true
			}
			if c.opt.Mode == engine.ModeDeltaCoMe {
				k, _ := archive.MethodKind(c.opt.Method, r.Manifest().Settings.Grid)
				assert.True(t, kinds[k], "the archive holds kind %s", k)
			}
		})
	}
}

// TestTensorOwned checks that Tensor's bytes are the caller's even for the
// kinds that decode to the base's or the archive's own bytes.
func TestTensorOwned(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "vectors")
	r, err := delta.Open(filepath.Join(dir, "base"), filepath.Join(dir, "deltacome.dcm"))
	require.NoError(t, err)
	defer r.Close()
	for _, rec := range r.Manifest().Tensors {
		a, err := r.Tensor(rec.Name)
		require.NoError(t, err)
		b, err := r.Tensor(rec.Name)
		require.NoError(t, err)
		a[0] ^= 0xff // would fault on a read-only mapping, or show in b
		assert.NotEqual(t, a, b, "%s (%s)", rec.Name, rec.Kind)
	}
}

// TestErrors checks the sentinels callers branch on.
func TestErrors(t *testing.T) {
	vectors := filepath.Join("..", "..", "testdata", "vectors")
	r, err := delta.Open(filepath.Join(vectors, "base"), filepath.Join(vectors, "bitdelta.dcm"))
	require.NoError(t, err)
	defer r.Close()
	_, err = r.Tensor("model.layers.9.mlp.up_proj.weight")
	assert.ErrorIs(t, err, delta.ErrNotFound)
	_, err = r.Float32("nope")
	assert.ErrorIs(t, err, delta.ErrNotFound)

	_, err = delta.Open(tinyBase, filepath.Join(vectors, "deltacome.dcm"))
	assert.ErrorIs(t, err, delta.ErrWrongBase, "another model's tensors")

	_, err = delta.Open(vectors, filepath.Join(vectors, "sha256.json"))
	assert.Error(t, err, "not an archive")

	// The fine-tune has the base's names, dtypes and shapes: it passes
	// Open, and each changed tensor is refused when read.
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, err = engine.Compress(context.Background(), tinyBase, tinyFT, arch, engine.CompressOptions{Mode: engine.ModeLossless, Tool: "test"})
	require.NoError(t, err)
	r2, err := delta.Open(tinyFT, arch)
	require.NoError(t, err)
	defer r2.Close()
	refused := 0
	for _, rec := range r2.Manifest().Tensors {
		if rec.Kind == archive.KindSame {
			continue
		}
		_, err := r2.Tensor(rec.Name)
		assert.ErrorIs(t, err, delta.ErrWrongBase, rec.Name)
		refused++
	}
	assert.Positive(t, refused)
}
