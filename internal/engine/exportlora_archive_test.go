package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExportLoRAFromArchive exports the bundled pair's archives, of both
// low-rank kinds, and checks each module against the optimal truncation
// of the delta the archive holds, and the layout against the adapter made
// from the fine-tune itself.
func TestExportLoRAFromArchive(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fromFT := filepath.Join(dir, "from-ft")
	_, err := ExportLoRA(ctx, tinyBase, tinyFT, fromFT, loraOpts(8))
	require.NoError(t, err)
	ftFile, ftCfg, _ := readAdapter(t, fromFT)
	base, ft := openTinyPair(t)

	for _, method := range []string{MethodDeltaCoMe, MethodLowRank} {
		t.Run(method, func(t *testing.T) {
			if testing.Short() && method == MethodDeltaCoMe {
				t.Skip("one archive kind is enough under -short")
			}
			arch := filepath.Join(dir, method+".dcm")
			copt := deltaOpts(t, 16, "auto")
			copt.Method = method
			_, err := Compress(ctx, tinyBase, tinyFT, arch, copt)
			require.NoError(t, err)
			require.True(t, isArchive(arch))

			out := filepath.Join(dir, method+"-adapter")
			res, err := ExportLoRA(ctx, tinyBase, arch, out, loraOpts(8))
			require.NoError(t, err)
			assert.True(t, res.FromArchive)
			f, cfg, _ := readAdapter(t, out)
			assert.Equal(t, ftCfg.TargetModules, cfg.TargetModules)
			assert.Equal(t, ftFile.Len(), f.Len(), "the same modules as from the fine-tune")

			a, err := openLoRAArchive(tinyBase, arch, &LoRAOptions{Rank: 8, DType: safetensors.BF16})
			require.NoError(t, err)
			defer a.close()
			require.Len(t, res.Modules, 28)
			var trueErrSq, trueNormSq float64 // against the fine-tune's own delta
			for _, m := range res.Modules {
				d := ftDelta(t, base, ft, m.Tensor, m.Out*m.In)
				e := storedError(t, f, m.Module, d, m.Out, m.In)
				n2 := sumSq(d)
				trueErrSq += e * e * n2
				trueNormSq += n2
				rec := a.recs[m.Tensor]
				delta, err := a.delta(rec)
				require.NoError(t, err)
				optimal := optimalError(t, delta, m.Out, m.In, m.Rank)
				assert.GreaterOrEqual(t, m.RelError, optimal-1e-6, m.Module)
				assert.LessOrEqual(t, m.RelError, optimalSlack*optimal+roundingTol[safetensors.BF16], "%s: error %.5f, optimal %.5f", m.Module, m.RelError, optimal)
				assert.InDelta(t, storedError(t, f, m.Module, delta, m.Out, m.In), m.RelError, 1e-5, m.Module)
				want, _, _ := rec.DeltaError()
				assert.Equal(t, want, m.ArchiveRelError, m.Module)
				if method == MethodLowRank && rec.LowRankBF16.Rank < 8 {
					assert.Equal(t, rec.LowRankBF16.Rank, m.Rank, "%s: capped at the rank the archive keeps", m.Module)
					assert.Less(t, m.RelError, roundingTol[safetensors.BF16], "%s: the archive's factors carried over", m.Module)
				}
			}
			t.Logf("%s archive, rank 8: error against the archive's delta %.4f, the archive's own %.4f, the adapter's against the fine-tune's delta %.4f",
				method, res.RelError, res.ArchiveRelError, math.Sqrt(trueErrSq/trueNormSq))
			assert.LessOrEqual(t, math.Sqrt(trueErrSq/trueNormSq), res.RelError+res.ArchiveRelError+1e-9, "the triangle inequality")

			plan, err := PlanLoRA(tinyBase, arch, loraOpts(8))
			require.NoError(t, err)
			assert.Equal(t, res.AdapterBytes, plan.AdapterBytes)

			// The fine-tune has the base's layout: its bytes give it away.
			_, err = ExportLoRA(ctx, tinyFT, arch, filepath.Join(dir, "wrong-base"), loraOpts(8))
			assert.ErrorIs(t, err, ErrWrongBase)
			assert.NoDirExists(t, filepath.Join(dir, "wrong-base"))
		})
	}
}

func TestExportLoRAFromArchiveRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lossless := filepath.Join(dir, "lossless.dcm")
	_, err := Compress(ctx, tinyBase, tinyFT, lossless, losslessOpts())
	require.NoError(t, err)
	bitdelta := filepath.Join(dir, "bitdelta.dcm")
	copt := deltaOpts(t, 16, "auto")
	copt.Method = MethodBitDelta
	_, err = Compress(ctx, tinyBase, tinyFT, bitdelta, copt)
	require.NoError(t, err)

	for _, tc := range []struct {
		name, base, arch string
		want             error
	}{
		{"lossless archive", tinyBase, lossless, ErrUsage},
		{"bitdelta archive", tinyBase, bitdelta, ErrUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "adapter")
			_, err := ExportLoRA(ctx, tc.base, tc.arch, out, loraOpts(8))
			assert.ErrorIs(t, err, tc.want)
			_, err = PlanLoRA(tc.base, tc.arch, loraOpts(8))
			assert.ErrorIs(t, err, tc.want)
			assert.NoDirExists(t, out)
		})
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "nothing but the two archives")
}
