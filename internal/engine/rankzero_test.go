package engine

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/archive"
)

// TestRankZeroIsTheBase compresses the tiny pair at a ratio whose budget
// holds no singular pair of any projection: every projection gets rank 0,
// verify and reconstruct accept the archive, the reconstruction of every
// projection is its base tensor, and nothing but the output is left on
// disk.
func TestRankZeroIsTheBase(t *testing.T) {
	ctx := context.Background()
	for _, method := range []string{MethodDeltaCoMe, MethodLowRank} {
		t.Run(method, func(t *testing.T) {
			dir := t.TempDir()
			arch := filepath.Join(dir, "a.dcm")
			opt := deltaOpts(t, 5000, "auto")
			opt.Method = method
			_, err := Compress(ctx, tinyBase, tinyFT, arch, opt)
			require.NoError(t, err)

			rep, err := Inspect(arch)
			require.NoError(t, err)
			var projections []string
			for _, rec := range rep.Manifest.Tensors {
				switch rec.Kind {
				case archive.KindLowRankSym:
					assert.Zero(t, rec.LowRankSym.Rank, rec.Name)
				case archive.KindLowRankBF16:
					assert.Zero(t, rec.LowRankBF16.Rank, rec.Name)
				default:
					continue
				}
				assert.Zero(t, rec.StoredBytes(), rec.Name)
				projections = append(projections, rec.Name)
			}
			require.NotEmpty(t, projections)

			vrep, err := Verify(ctx, tinyBase, tinyFT, arch, VerifyOptions{})
			require.NoError(t, err)
			require.Empty(t, vrep.Problems)

			out := filepath.Join(dir, "out")
			_, err = Reconstruct(ctx, tinyBase, arch, out, ReconstructOptions{})
			require.NoError(t, err)
			base, got := tensors(t, tinyBase), tensors(t, out)
			for _, n := range projections {
				assert.True(t, bytes.Equal(base[n], got[n]), "projection %s is not its base tensor", n)
			}
			assert.ElementsMatch(t, []string{"a.dcm", "out"}, fileNames(t, dir))
		})
	}
}
