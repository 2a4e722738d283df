package engine

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	const n = 16
	rng := rand.New(rand.NewPCG(5, 6))
	w, zero := make([]float32, n*n), make([]float32, n*n)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	base := writeCheckpoint(t, map[string]tensorSpec{
		"layers.0.q_proj.weight": {safetensors.F32, []uint64{n, n}, zero},
		"norm.weight":            {safetensors.BF16, []uint64{2}, []float32{1, 1}},
		"same.weight":            {safetensors.BF16, []uint64{2}, []float32{3, 4}},
	})
	ft := writeCheckpoint(t, map[string]tensorSpec{
		"layers.0.q_proj.weight": {safetensors.F32, []uint64{n, n}, w}, // full rank: ratio 4 cannot keep it all
		"norm.weight":            {safetensors.BF16, []uint64{2}, []float32{1, 2}},
		"same.weight":            {safetensors.BF16, []uint64{2}, []float32{3, 4}},
		"new.weight":             {safetensors.F32, []uint64{1}, []float32{9}},
	})
	other := writeCheckpoint(t, map[string]tensorSpec{
		"layers.0.q_proj.weight": {safetensors.F32, []uint64{n, n}, zero},
		"norm.weight":            {safetensors.BF16, []uint64{2}, []float32{1, 3}},
		"same.weight":            {safetensors.BF16, []uint64{2}, []float32{3, 4}},
		"new.weight":             {safetensors.F32, []uint64{1}, []float32{9}},
	})
	opt := deltaOpts(t, 4, "auto")
	opt.GroupSize = 8
	arch := filepath.Join(t.TempDir(), "a.dcm")
	_, err := Compress(ctx, base, ft, arch, opt)
	require.NoError(t, err)

	rep, err := Verify(ctx, base, ft, arch, VerifyOptions{Workers: 2})
	require.NoError(t, err)
	assert.Empty(t, rep.Problems)
	assert.Equal(t, 3, rep.Exact, "norm (xor), same, new (full)")
	assert.Equal(t, 1, rep.Lossy, "the projection")
	proj := rep.Tensors[slices.IndexFunc(rep.Tensors, func(c TensorCheck) bool { return c.Name == "layers.0.q_proj.weight" })]
	assert.Greater(t, proj.RelError, 0.0)
	assert.Less(t, proj.RelError, 1.0)
	// An F32 fine-tune has no rounding of its own: verify measures what
	// compress recorded, up to float32 summation order.
	const f32Tol = 1e-4
	assert.InDelta(t, proj.RecordedError, proj.RelError, f32Tol)
	assert.InDelta(t, proj.RelError, rep.RelError, 1e-12, "one lossy tensor: the aggregate is its error")
	require.NoError(t, rep.Check(rep.RelError))
	assert.ErrorIs(t, rep.Check(rep.RelError/2), ErrVerify)
	assert.NoError(t, rep.Check(math.NaN()), "NaN: no limit")

	rep, err = Verify(ctx, base, other, arch, VerifyOptions{})
	require.NoError(t, err)
	assert.Len(t, rep.Problems, 2, "the projection and the norm differ from what the archive was made from")
	assert.ErrorIs(t, rep.Check(math.NaN()), ErrVerify)

	_, err = Verify(ctx, ft, ft, arch, VerifyOptions{})
	assert.ErrorIs(t, err, ErrWrongBase)
}
