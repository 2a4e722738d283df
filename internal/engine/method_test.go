package engine

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/bitdelta"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/lowrankbf16"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

func methodOpts(t *testing.T, method string, ratio float64) CompressOptions {
	o := deltaOpts(t, ratio, "auto")
	o.Method = method
	return o
}

func decodeF32(t *testing.T, data []byte, dt safetensors.DType) []float32 {
	t.Helper()
	out := make([]float32, len(data)/int(dt.Size()))
	require.NoError(t, dtype.Decode(out, data, dt))
	return out
}

// TestMethodRoundTrips compresses the tiny pair with the comparison methods
// and reconstructs it: every projection is base + the method's decode of
// its blobs, rounded to bf16; everything else is bit-exact.
func TestMethodRoundTrips(t *testing.T) {
	ctx := context.Background()
	want := tensors(t, tinyFT)
	baseT := tensors(t, tinyBase)
	for _, tc := range []struct {
		method string
		kind   string
		ratio  float64
	}{
		{MethodBitDelta, archive.KindBitDelta, 16},
		{MethodLowRank, archive.KindLowRankBF16, 16},
		{MethodLowRank, archive.KindLowRankBF16, 32},
	} {
		t.Run(fmt.Sprintf("%s@%v", tc.method, tc.ratio), func(t *testing.T) {
			if testing.Short() && tc.ratio != 16 {
				t.Skip("one ratio per method in short mode")
			}
			dir := t.TempDir()
			arch := filepath.Join(dir, "a.dcm")
			sum, err := Compress(ctx, tinyBase, tinyFT, arch, methodOpts(t, tc.method, tc.ratio))
			require.NoError(t, err)
			assert.Equal(t, 28, sum.LossyTensors, "4 layers x 7 projections")

			ar, err := archive.Open(arch)
			require.NoError(t, err)
			defer ar.Close()
			assert.Equal(t, tc.method, ar.Manifest.Settings.Method)
			assert.Equal(t, ModeDeltaCoMe, ar.Manifest.Settings.Mode)

			out := filepath.Join(dir, "out")
			_, err = Reconstruct(ctx, tinyBase, arch, out, ReconstructOptions{})
			require.NoError(t, err)
			got := tensors(t, out)

			var errSq, normSq float64
			for i := range ar.Manifest.Tensors {
				r := &ar.Manifest.Tensors[i]
				if r.Kind != tc.kind {
					assert.Equal(t, want[r.Name], got[r.Name], "%s is bit-exact", r.Name)
					continue
				}
				blob := func(role string) []byte {
					b, ok := r.Blob(role)
					require.True(t, ok, role)
					d, err := ar.Blob(b)
					require.NoError(t, err)
					return d
				}
				rows, cols := int(r.Shape[0]), int(r.Shape[1])
				wb := decodeF32(t, baseT[r.Name], safetensors.BF16)
				wf := decodeF32(t, want[r.Name], safetensors.BF16)
				hat := make([]float32, rows*cols)
				switch tc.kind {
				case archive.KindBitDelta:
					assert.Equal(t, bitdelta.Cost(rows*cols), r.StoredBytes(), "%s: 1 bit per element and a scale", r.Name)
					scale, err := bitdelta.DecodeScale(blob(archive.RoleScale))
					require.NoError(t, err)
					var abs float64
					for k := range hat {
						d := wf[k] - wb[k]
						abs += math.Abs(float64(d))
						hat[k] = scale
						if d < 0 { // the signs, recomputed from the checkpoints
							hat[k] = -scale
						}
					}
					assert.Equal(t, float32(abs/float64(len(hat))), scale, "%s: scale is mean |Delta|", r.Name)
				case archive.KindLowRankBF16:
					assert.LessOrEqual(t, r.StoredBytes(), svdquant.Budget(rows, cols, tc.ratio), "%s over budget", r.Name)
					assert.Equal(t, lowrankbf16.Cost(rows, cols, r.LowRankBF16.Rank), r.StoredBytes())
					hat, err = lowrankbf16.Product(blob(archive.RoleU), blob(archive.RoleV), rows, cols, r.LowRankBF16.Rank)
					require.NoError(t, err)
				}
				w := make([]float32, rows*cols)
				for k := range w {
					w[k] = wb[k] + hat[k]
					e, d := float64(wf[k]-wb[k]-hat[k]), float64(wf[k]-wb[k])
					errSq += e * e
					normSq += d * d
				}
				exp := make([]byte, len(want[r.Name]))
				require.NoError(t, dtype.Encode(exp, w, safetensors.BF16))
				assert.Equal(t, exp, got[r.Name], "%s is base + decode, rounded to bf16", r.Name)
			}
			// The recorded aggregate is the error of the decoded deltas.
			assert.InDelta(t, math.Sqrt(errSq/normSq), sum.AggRelError, 1e-6)
			rep, err := Inspect(arch)
			require.NoError(t, err)
			assert.InDelta(t, sum.AggRelError, rep.Totals.RelError, 1e-12)
			assert.Equal(t, 28, rep.ByKind[tc.kind].Tensors)
			t.Logf("%s @%v: aggregate error %.4f, archive %d bytes", tc.method, tc.ratio, sum.AggRelError, sum.ArchiveSize)
		})
	}
}

func TestMethodSettings(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	arch := filepath.Join(dir, "b.dcm")
	_, err := Compress(ctx, tinyBase, tinyFT, arch, methodOpts(t, MethodBitDelta, 16))
	require.NoError(t, err)
	rep, err := Inspect(arch)
	require.NoError(t, err)
	s := rep.Manifest.Settings
	assert.Equal(t, MethodBitDelta, s.Method)
	assert.Zero(t, s.Ratio, "bitdelta has no ratio")
	assert.Empty(t, s.Schedule)
	assert.Zero(t, s.GroupSize)

	lr := filepath.Join(dir, "l.dcm")
	_, err = Compress(ctx, tinyBase, tinyFT, lr, methodOpts(t, MethodLowRank, 64))
	require.NoError(t, err)
	rep, err = Inspect(lr)
	require.NoError(t, err)
	s = rep.Manifest.Settings
	assert.Equal(t, MethodLowRank, s.Method)
	assert.Equal(t, 64.0, s.Ratio)
	assert.Equal(t, "exact", s.SVD, "plain low rank always takes the exact SVD")
	assert.Empty(t, s.Schedule)

	_, err = Compress(ctx, tinyBase, tinyFT, filepath.Join(dir, "c.dcm"), methodOpts(t, "sparse", 16))
	assert.ErrorIs(t, err, ErrUsage)
	assert.NoFileExists(t, filepath.Join(dir, "c.dcm"))
}

// TestMethodCorruptBlobs checks that reconstruct refuses damaged blobs of
// the new kinds with format errors, not panics.
func TestMethodCorruptBlobs(t *testing.T) {
	ctx := context.Background()
	for _, method := range []string{MethodBitDelta, MethodLowRank} {
		t.Run(method, func(t *testing.T) {
			dir := t.TempDir()
			arch := filepath.Join(dir, "a.dcm")
			opt := methodOpts(t, method, 32)
			var err error
			opt.Select, err = NewSelector([]string{`layers\.0\.self_attn\.k_proj`}, nil) // one tensor is enough
			require.NoError(t, err)
			_, err = Compress(ctx, tinyBase, tinyFT, arch, opt)
			require.NoError(t, err)
			ar, err := archive.Open(arch)
			require.NoError(t, err)
			defer ar.Close()
			var rec *archive.Tensor
			for i := range ar.Manifest.Tensors {
				if r := &ar.Manifest.Tensors[i]; r.Kind == archive.KindBitDelta || r.Kind == archive.KindLowRankBF16 {
					rec = r
					break
				}
			}
			require.NotNil(t, rec)
			blobs, err := storage.ReadBlobs(ar, rec)
			require.NoError(t, err)
			for i := range blobs {
				blobs[i] = blobs[i][:len(blobs[i])-1]
			}
			k, ok := storage.Lookup(rec.Kind)
			require.True(t, ok)
			_, err = k.Decode(&storage.DecodeInput{Rec: rec, Blobs: blobs, Base: tensors(t, tinyBase)[rec.Name],
				BaseDType: safetensors.BF16, Alloc: newBuffer})
			assert.ErrorIs(t, err, archive.ErrFormat)
		})
	}
}
