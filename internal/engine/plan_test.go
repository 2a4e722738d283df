package engine

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// TestPlanBoundsCompress checks the header-only plan against what Compress
// then stores: the same kinds, every tensor within its bound, the archive
// within the predicted size, the header estimate close to the real one.
func TestPlanBoundsCompress(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  CompressOptions
	}{
		{"deltacome ratio 16", deltaOpts(t, 16, "auto")},
		{"lossless", losslessOpts()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := Plan(tinyBase, tinyFT, tc.opt)
			require.NoError(t, err)
			arch := filepath.Join(t.TempDir(), "a.dcm")
			tc.opt.Workers = 2
			sum, err := Compress(context.Background(), tinyBase, tinyFT, arch, tc.opt)
			require.NoError(t, err)
			r, err := Inspect(arch)
			require.NoError(t, err)
			require.Len(t, plan.Tensors, len(r.Manifest.Tensors))
			var stored int64
			for i, pt := range plan.Tensors {
				rec := &r.Manifest.Tensors[i]
				require.Equal(t, pt.Name, rec.Name)
				switch pt.Kind {
				case PlanSameOrXOR:
					assert.Contains(t, []string{archive.KindSame, archive.KindXOR}, rec.Kind, pt.Name)
				case archive.KindLowRankSym:
					assert.Contains(t, []string{archive.KindSame, archive.KindLowRankSym}, rec.Kind, pt.Name)
					assert.Equal(t, svdquant.Budget(int(pt.Shape[0]), int(pt.Shape[1]), tc.opt.Ratio), pt.Budget)
				default:
					assert.Equal(t, pt.Kind, rec.Kind, pt.Name)
				}
				assert.LessOrEqual(t, rec.StoredBytes(), pt.MaxBytes, pt.Name)
				stored += rec.StoredBytes()
			}
			assert.LessOrEqual(t, sum.ArchiveSize, plan.MaxArchiveBytes)
			realHeader := r.Size - r.Totals.StoredBytes - r.Manifest.SideFiles[0].Blob.Size
			// The estimate writes one band per low-rank tensor where the
			// real lists have up to five: within 10% of the real header.
			assert.InEpsilon(t, float64(realHeader), float64(plan.HeaderBytes), 0.1)
			if tc.opt.Mode == ModeDeltaCoMe {
				assert.Equal(t, 28, plan.ByKind[archive.KindLowRankSym].Tensors)
			}
		})
	}
}

// TestPlanRefusesWhatCompressRefuses checks the failures a plan can see
// from headers: shapes that differ, a missing checkpoint, bad options.
func TestPlanRefusesWhatCompressRefuses(t *testing.T) {
	base := writeCheckpoint(t, map[string]tensorSpec{"layers.0.q_proj.weight": {safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 4}}})
	ft := writeCheckpoint(t, map[string]tensorSpec{"layers.0.q_proj.weight": {safetensors.BF16, []uint64{4, 1}, []float32{1, 2, 3, 4}}})
	_, err := Plan(base, ft, deltaOpts(t, 16, "auto"))
	assert.ErrorIs(t, err, ErrInput)
	_, err = Plan(base, filepath.Join(t.TempDir(), "missing"), deltaOpts(t, 16, "auto"))
	assert.ErrorIs(t, err, ErrInput)
	_, err = Plan(base, base, CompressOptions{Mode: "nope"})
	assert.ErrorIs(t, err, ErrUsage)
}

// sparseLayer writes dir/base and dir/ft, each one safetensors file with
// the projections of one Llama layer of the given sizes in bf16, their data
// a hole in a sparse file: enough for a header-only plan.
func sparseLayer(t *testing.T, dir string, hidden, inter, kv int) {
	shapes := map[string][2]int{
		"q_proj": {hidden, hidden}, "k_proj": {kv, hidden}, "v_proj": {kv, hidden}, "o_proj": {hidden, hidden},
		"gate_proj": {inter, hidden}, "up_proj": {inter, hidden}, "down_proj": {hidden, inter},
	}
	var infos []stfile.Info
	var off int64
	for _, p := range []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} {
		s := shapes[p]
		block := "self_attn"
		if strings.Contains("gate_proj up_proj down_proj", p) {
			block = "mlp"
		}
		size := int64(s[0]) * int64(s[1]) * 2
		infos = append(infos, stfile.Info{Name: "model.layers.0." + block + "." + p + ".weight", DType: safetensors.BF16,
			Shape: []uint64{uint64(s[0]), uint64(s[1])}, Offset: off, Size: size})
		off += size
	}
	header, err := stfile.EncodeHeader(infos, nil)
	require.NoError(t, err)
	for _, side := range []string{"base", "ft"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, side), 0o755))
		f, err := os.Create(filepath.Join(dir, side, "model.safetensors"))
		require.NoError(t, err)
		require.NoError(t, stfile.WriteHeader(f, header))
		n, err := f.Seek(0, io.SeekCurrent)
		require.NoError(t, err)
		require.NoError(t, f.Truncate(n+off))
		require.NoError(t, f.Close())
	}
}

func TestPlanMemoryBounded(t *testing.T) {
	// The memory plan of 70B- and 405B-class layers on 2 cores: one tensor
	// at once, its expected peak within the 2 GiB and 4 GiB (the
	// real peak RSS is measured in docs/PERFORMANCE.md), and the workers
	// following --max-memory.
	if runtime.GOMAXPROCS(0) > 6 {
		t.Skip("the default cap grows beyond 6 cores")
	}
	const gib = 1 << 30
	for _, tc := range []struct {
		name            string
		hidden, inter   int
		kv              int
		ratio           float64
		maxMemory, most int64
		workers         int
		grid            string
	}{
		{"70B ratio 8, grid asym", 8192, 28672, 1024, 8, 0, 2 * gib, 1, GridAsym},
		{"70B ratio 8", 8192, 28672, 1024, 8, 0, 2 * gib, 1, ""},
		{"70B ratio 16", 8192, 28672, 1024, 16, 0, 2 * gib, 1, ""},
		{"70B ratio 64", 8192, 28672, 1024, 64, 0, 2 * gib, 1, ""},
		{"70B ratio 16, 8 GiB", 8192, 28672, 1024, 16, 8 * gib, 4 * gib, 2, ""},
		{"405B ratio 16", 16384, 53248, 1024, 16, 4 * gib, 4 * gib, 1, ""},
		{"7B ratio 16", 4096, 11008, 4096, 16, 0, 2 * gib, 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sparseLayer(t, dir, tc.hidden, tc.inter, tc.kv)
			opt := deltaOpts(t, tc.ratio, "auto")
			opt.MaxMemory = tc.maxMemory
			if tc.grid == GridAsym {
				opt.Grid, opt.GroupSize = GridAsym, 128
			}
			p, err := Plan(filepath.Join(dir, "base"), filepath.Join(dir, "ft"), opt)
			require.NoError(t, err)
			t.Logf("peak %.0f MiB, %d workers, largest %s %.0f MiB", float64(p.Memory.Peak)/(1<<20), p.Memory.Workers,
				p.Memory.Largest, float64(p.Memory.LargestBytes)/(1<<20))
			assert.LessOrEqual(t, p.Memory.Peak, tc.most)
			assert.Equal(t, min(tc.workers, runtime.GOMAXPROCS(0)), p.Memory.Workers)
		})
	}
}
