package synth

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
)

func TestWriteDeterministic(t *testing.T) {
	c := Tiny(1)
	dirs := []string{t.TempDir(), t.TempDir()}
	for i, d := range dirs {
		require.NoError(t, Write(context.Background(), d, c, i+1)) // 1 then 2 workers
	}
	for _, side := range []string{"base", "ft"} {
		a, err := os.ReadFile(filepath.Join(dirs[0], side, "model.safetensors"))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(dirs[1], side, "model.safetensors"))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(a, b), "%s differs between worker counts", side)
	}
	c.Seed = 2
	other := t.TempDir()
	require.NoError(t, Write(context.Background(), other, c, 0))
	a, _ := os.ReadFile(filepath.Join(dirs[0], "ft", "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(other, "ft", "model.safetensors"))
	assert.False(t, bytes.Equal(a, b), "another seed gives other weights")
}

func TestWriteShapesAndDelta(t *testing.T) {
	c := Tiny(2)
	dir := t.TempDir()
	require.NoError(t, Write(context.Background(), dir, c, 0))
	base, err := checkpoint.Open(filepath.Join(dir, "base"))
	require.NoError(t, err)
	defer base.Close()
	ft, err := checkpoint.Open(filepath.Join(dir, "ft"))
	require.NoError(t, err)
	defer ft.Close()
	assert.Len(t, ft.Names(), 2*9+3)
	want := map[string][]uint64{
		"model.layers.1.self_attn.q_proj.weight": {256, 256},
		"model.layers.1.self_attn.k_proj.weight": {64, 256},
		"model.layers.0.mlp.gate_proj.weight":    {688, 256},
		"model.layers.0.mlp.down_proj.weight":    {256, 688},
		"model.embed_tokens.weight":              {512, 256},
		"model.norm.weight":                      {256},
	}
	for name, shape := range want {
		tt, ok := ft.Tensor(name)
		require.True(t, ok, name)
		assert.Equal(t, shape, tt.Shape, name)
		assert.Equal(t, "BF16", tt.DType.String(), name)
	}
	// |Delta|/|W| of a projection is near DeltaScale; bf16 rounding of both
	// checkpoints adds about 2^-9·|W| of noise per entry, so allow 25%.
	const name = "model.layers.0.mlp.up_proj.weight"
	decode := func(c *checkpoint.Checkpoint) []float32 {
		tt, _ := c.Tensor(name)
		raw, err := c.Data(name)
		require.NoError(t, err)
		out := make([]float32, tt.Shape[0]*tt.Shape[1])
		require.NoError(t, dtype.Decode(out, raw, tt.DType))
		return out
	}
	w, f := decode(base), decode(ft)
	var dd, ww float64
	for i := range w {
		d := float64(f[i] - w[i])
		dd += d * d
		ww += float64(w[i]) * float64(w[i])
	}
	assert.InEpsilon(t, c.DeltaScale, math.Sqrt(dd/ww), 0.25)
	assert.InEpsilon(t, c.WeightStd, math.Sqrt(ww/float64(len(w))), 0.05)
}

func TestConfigErrors(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"zero hidden":      func(c *Config) { c.Hidden = 0 },
		"negative layers":  func(c *Config) { c.Layers = -1 },
		"nothing to write": func(c *Config) { c.Layers, c.Vocab = 0, 0 },
		"noise share > 1":  func(c *Config) { c.NoiseShare = 1.5 },
		"zero weight std":  func(c *Config) { c.WeightStd = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			c := Tiny(1)
			mutate(&c)
			assert.ErrorIs(t, Write(context.Background(), t.TempDir(), c, 0), ErrConfig)
		})
	}
}
