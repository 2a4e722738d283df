package archive

import (
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lossySample writes an archive holding one bitdelta tensor (4x4) and one
// lowrank-bf16 tensor (4x4, rank 1), with blobs of the right sizes.
func lossySample(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lossy.dcm")
	w, err := Create(path)
	require.NoError(t, err)
	add := func(role, name string, raw []byte, dt safetensors.DType, shape []uint64) Blob {
		b, stored, err := EncodeBlob(role, name+"/"+role, raw, CodecRaw, 0)
		require.NoError(t, err)
		require.NoError(t, w.Add(b, dt, shape, stored))
		return b
	}
	signs := add(RoleSigns, "a", []byte{0xa5, 0x0f}, safetensors.U8, []uint64{2})
	scale := add(RoleScale, "a", []byte{0, 0, 0x80, 0x3f}, safetensors.F32, []uint64{1})
	u := add(RoleU, "b", make([]byte, 8), safetensors.BF16, []uint64{4, 1})
	v := add(RoleV, "b", make([]byte, 8), safetensors.BF16, []uint64{1, 4})
	m := &Manifest{Format: FormatName, Version: Version, Tool: "test",
		Settings: Settings{Mode: "deltacome", Method: "bitdelta"},
		Layout:   Layout{Shards: []Shard{{File: "model.safetensors", Header: "{}"}}},
		Tensors: []Tensor{
			{Name: "a", DType: "BF16", Shape: []uint64{4, 4}, Kind: KindBitDelta, Bytes: 32, Blobs: []Blob{signs, scale},
				BitDelta: &BitDelta{RelError: 0.5, DeltaNorm: 2}},
			{Name: "b", DType: "BF16", Shape: []uint64{4, 4}, Kind: KindLowRankBF16, Bytes: 32, Blobs: []Blob{u, v},
				LowRankBF16: &LowRankBF16{Rank: 1, RelError: 0.25, DeltaNorm: 3, EnergyKept: 0.9, Budget: 16}},
		}}
	require.NoError(t, w.Commit(m))
	return path
}

func TestLossyKindsRead(t *testing.T) {
	r, err := Open(lossySample(t))
	require.NoError(t, err)
	defer r.Close()
	m := r.Manifest
	assert.Equal(t, "bitdelta", m.Settings.Method)
	cases := []struct {
		rel, norm float64
	}{{0.5, 2}, {0.25, 3}}
	for i, tc := range cases {
		rel, norm, ok := m.Tensors[i].DeltaError()
		assert.True(t, ok, m.Tensors[i].Kind)
		assert.Equal(t, tc.rel, rel)
		assert.Equal(t, tc.norm, norm)
	}
	assert.Equal(t, int64(6), m.Tensors[0].StoredBytes(), "2 bytes of signs, 4 of scale")

	_, _, ok := (&Tensor{Kind: KindXOR}).DeltaError()
	assert.False(t, ok, "bit-exact kinds have no error")
}

func TestLossyKindsRejects(t *testing.T) {
	path := lossySample(t)
	nth := func(m map[string]any, i int) map[string]any { return m["tensors"].([]any)[i].(map[string]any) }
	cases := []struct {
		name string
		edit func(m map[string]any)
	}{
		{"bitdelta without record", func(m map[string]any) { delete(nth(m, 0), "bitdelta") }},
		{"bitdelta without scale", func(m map[string]any) {
			nth(m, 0)["blobs"] = nth(m, 0)["blobs"].([]any)[:1]
		}},
		{"lowrank-bf16 without record", func(m map[string]any) { delete(nth(m, 1), "lowrank_bf16") }},
		{"lowrank-bf16 without v", func(m map[string]any) {
			nth(m, 1)["blobs"] = nth(m, 1)["blobs"].([]any)[:1]
		}},
		{"negative rank", func(m map[string]any) { nth(m, 1)["lowrank_bf16"].(map[string]any)["rank"] = -1 }},
		{"record of another kind", func(m map[string]any) { nth(m, 0)["lowrank_bf16"] = nth(m, 1)["lowrank_bf16"] }},
		{"kind swapped", func(m map[string]any) { nth(m, 0)["kind"] = KindLowRankBF16 }},
		{"kind unknown to this reader", func(m map[string]any) { nth(m, 0)["kind"] = "bitdelta-v2" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(rewrite(t, path, tc.edit))
			require.ErrorIs(t, err, ErrFormat)
		})
	}
}
