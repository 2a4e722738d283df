package engine

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
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
