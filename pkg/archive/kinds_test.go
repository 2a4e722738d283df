package archive

import (
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lossySample writes an archive holding one bitdelta tensor (4x4) and one
// holding a lowrank-bf16 tensor (4x4, rank 1), with blobs of the right
// sizes.
func lossySample(t *testing.T) (bitDelta, lowRankBF16 string) {
	t.Helper()
	bd := newBuilder(t, "deltacome", "bitdelta")
	bd.tensor(Tensor{Name: "a", DType: "BF16", Shape: []uint64{4, 4}, Kind: KindBitDelta, BitDelta: &BitDelta{RelError: 0.5, DeltaNorm: 2},
		Blobs: []Blob{
			bd.blob(RoleSigns, "a/signs", []byte{0xa5, 0x0f}, CodecRaw, 0, safetensors.U8, []uint64{2}),
			bd.blob(RoleScale, "a/scale", []byte{0, 0, 0x80, 0x3f}, CodecRaw, 0, safetensors.F32, []uint64{1}),
		}}, "BF16")
	lr := newBuilder(t, "deltacome", "lowrank")
	lr.tensor(Tensor{Name: "b", DType: "BF16", Shape: []uint64{4, 4}, Kind: KindLowRankBF16,
		LowRankBF16: &LowRankBF16{Rank: 1, RelError: 0.25, DeltaNorm: 3, EnergyKept: 0.9, Budget: 16},
		Blobs: []Blob{
			lr.blob(RoleU, "b/u", make([]byte, 8), CodecRaw, 0, safetensors.BF16, []uint64{4, 1}),
			lr.blob(RoleV, "b/v", make([]byte, 8), CodecRaw, 0, safetensors.BF16, []uint64{1, 4}),
		}}, "BF16")
	return bd.commit(), lr.commit()
}

// symSample writes an archive holding one lowrank-sym tensor (4x6, rank 1
// at 2 bits, one scale per vector) with blobs of the right sizes.
func symSample(t *testing.T) string {
	t.Helper()
	b := newBuilder(t, "deltacome", "deltacome")
	b.m.Settings.Grid = GridSym
	b.tensor(Tensor{Name: "c", DType: "BF16", Shape: []uint64{4, 6}, Kind: KindLowRankSym,
		LowRankSym: &LowRankSym{LowRank: LowRank{Rank: 1, Bands: []Band{{Bits: 2, Count: 1}}, RelError: 0.5, DeltaNorm: 1,
			EnergyKept: 0.5, Budget: 8}, Refit: 1, RefitRound: 1},
		Blobs: []Blob{
			b.blob(RoleUCodes, "c/u.codes", []byte{0x1b}, CodecRaw, 0, safetensors.U8, []uint64{1}),
			b.blob(RoleUScales, "c/u.scales", []byte{0x80, 0x3f}, CodecRaw, 0, safetensors.BF16, []uint64{1}),
			b.blob(RoleVCodes, "c/v.codes", []byte{0x1b, 0x0e}, CodecRaw, 0, safetensors.U8, []uint64{2}),
			b.blob(RoleVScales, "c/v.scales", []byte{0x00, 0x3f}, CodecRaw, 0, safetensors.BF16, []uint64{1}),
		}}, "BF16")
	return b.commit()
}

func TestLowRankSymRejects(t *testing.T) {
	sym := symSample(t)
	r, err := Open(sym)
	require.NoError(t, err)
	assert.Equal(t, GridSym, r.Manifest.Settings.Grid)
	rel, _, ok := r.Manifest.Tensors[0].DeltaError()
	assert.True(t, ok)
	assert.Equal(t, 0.5, rel)
	require.NoError(t, r.Close())
	first := func(m map[string]any) map[string]any { return m["tensors"].([]any)[0].(map[string]any) }
	rec := func(m map[string]any) map[string]any { return first(m)["lowrank_sym"].(map[string]any) }
	for name, edit := range map[string]func(m map[string]any){
		"without record":         func(m map[string]any) { delete(first(m), "lowrank_sym") },
		"without v.scales":       func(m map[string]any) { first(m)["blobs"] = first(m)["blobs"].([]any)[:3] },
		"negative group size":    func(m map[string]any) { rec(m)["group_size"] = -1 },
		"groups not stored":      func(m map[string]any) { rec(m)["group_size"] = 2 },
		"refit round past refit": func(m map[string]any) { rec(m)["refit_round"] = 2 },
		"rank vs bands":          func(m map[string]any) { rec(m)["rank"] = 2 },
		"over budget":            func(m map[string]any) { rec(m)["budget"] = 5 },
		"asym grid":              func(m map[string]any) { m["settings"].(map[string]any)["grid"] = GridAsym },
		"no grid":                func(m map[string]any) { delete(m["settings"].(map[string]any), "grid") },
		"grid of bitdelta": func(m map[string]any) {
			m["settings"].(map[string]any)["method"] = "bitdelta"
		},
		"unknown grid": func(m map[string]any) { m["settings"].(map[string]any)["grid"] = "nf4" },
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Open(rewrite(t, sym, edit))
			require.ErrorIs(t, err, ErrFormat)
		})
	}
}

func TestLossyKindsRead(t *testing.T) {
	bd, lr := lossySample(t)
	cases := []struct {
		path, method string
		rel, norm    float64
		stored       int64
	}{{bd, "bitdelta", 0.5, 2, 6}, {lr, "lowrank", 0.25, 3, 16}}
	for _, tc := range cases {
		r, err := Open(tc.path)
		require.NoError(t, err)
		m := r.Manifest
		assert.Equal(t, tc.method, m.Settings.Method)
		rel, norm, ok := m.Tensors[0].DeltaError()
		assert.True(t, ok, m.Tensors[0].Kind)
		assert.Equal(t, tc.rel, rel)
		assert.Equal(t, tc.norm, norm)
		assert.Equal(t, tc.stored, m.Tensors[0].StoredBytes())
		require.NoError(t, r.Close())
	}
	_, _, ok := (&Tensor{Kind: KindXOR}).DeltaError()
	assert.False(t, ok, "bit-exact kinds have no error")
}

func TestLossyKindsRejects(t *testing.T) {
	bd, lr := lossySample(t)
	first := func(m map[string]any) map[string]any { return m["tensors"].([]any)[0].(map[string]any) }
	cases := []struct {
		name, path string
		edit       func(m map[string]any)
	}{
		{"bitdelta without record", bd, func(m map[string]any) { delete(first(m), "bitdelta") }},
		{"bitdelta without scale", bd, func(m map[string]any) {
			first(m)["blobs"] = first(m)["blobs"].([]any)[:1]
		}},
		{"lowrank-bf16 without record", lr, func(m map[string]any) { delete(first(m), "lowrank_bf16") }},
		{"lowrank-bf16 without v", lr, func(m map[string]any) {
			first(m)["blobs"] = first(m)["blobs"].([]any)[:1]
		}},
		{"negative rank", lr, func(m map[string]any) { first(m)["lowrank_bf16"].(map[string]any)["rank"] = -1 }},
		{"record of another kind", bd, func(m map[string]any) { first(m)["lowrank_bf16"] = map[string]any{"rank": 0} }},
		{"kind swapped", bd, func(m map[string]any) { first(m)["kind"] = KindLowRankBF16 }},
		{"kind of another method", lr, func(m map[string]any) {
			first(m)["kind"] = KindBitDelta
			first(m)["bitdelta"] = first(m)["lowrank_bf16"]
			delete(first(m), "lowrank_bf16")
		}},
		{"kind unknown to this reader", bd, func(m map[string]any) { first(m)["kind"] = "bitdelta-v2" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(rewrite(t, tc.path, tc.edit))
			require.ErrorIs(t, err, ErrFormat)
		})
	}
}

// TestKindTable checks that each kind's blob specs carry the roles its
// table entry lists, in order, on every tensor of the test vectors (which
// hold every kind), so that the table is the one list of roles.
func TestKindTable(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range []string{"deltacome.dcm", "bitdelta.dcm", "lowrank.dcm", "deltacome-sym.dcm"} {
		r, err := Open(filepath.Join("..", "..", "testdata", "vectors", name))
		require.NoError(t, err)
		for i := range r.Manifest.Tensors {
			tn := &r.Manifest.Tensors[i]
			k, ok := lookupKind(tn.Kind)
			require.True(t, ok, tn.Kind)
			specs, err := k.blobs(tn.Name, tn)
			require.NoError(t, err)
			var roles []string
			for _, s := range specs {
				roles = append(roles, s.role)
			}
			assert.Equal(t, KindRoles(tn.Kind), roles, "%s: %s", name, tn.Name)
			assert.Equal(t, KindLossy(tn.Kind), tn.LowRank != nil || tn.BitDelta != nil || tn.LowRankBF16 != nil || tn.LowRankSym != nil, tn.Name)
			seen[tn.Kind] = true
		}
		require.NoError(t, r.Close())
	}
	for _, k := range kinds {
		assert.True(t, seen[k.name], "the test vectors hold no tensor of kind %s", k.name)
	}
	assert.Nil(t, KindRoles("nonesuch"))
	assert.False(t, KindLossy("nonesuch"))
}
