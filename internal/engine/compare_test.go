package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func compareOpts(t *testing.T, methods []string, ratios []float64, keep string) CompareOptions {
	o := deltaOpts(t, 16, "auto")
	return CompareOptions{Methods: methods, Ratios: ratios, Schedule: o.Schedule, GroupSize: o.GroupSize,
		Select: o.Select, Tool: "test", KeepDir: keep}
}

func TestRole(t *testing.T) {
	for name, want := range map[string]string{
		"model.layers.0.self_attn.q_proj.weight":              "q",
		"model.layers.11.self_attn.k_proj.weight":             "k",
		"model.layers.3.self_attn.v_proj.weight":              "v",
		"model.layers.3.self_attn.o_proj.weight":              "o",
		"model.layers.3.mlp.gate_proj.weight":                 "gate",
		"model.layers.3.mlp.up_proj.weight":                   "up",
		"model.layers.3.mlp.down_proj.weight":                 "down",
		"transformer.h.0.attn.c_attn.weight":                  "qkv",
		"transformer.h.0.attn.c_proj.weight":                  "o",
		"transformer.h.0.mlp.c_proj.weight":                   "down",
		"gpt_neox.layers.0.mlp.dense_h_to_4h.weight":          "up",
		"model.layers.0.block_sparse_moe.experts.0.w1.weight": "gate",
		"model.layers.0.block_sparse_moe.experts.0.w3.weight": "up",
		"model.layers.0.block_sparse_moe.experts.0.w2.weight": "down",
		"model.layers.0.block_sparse_moe.gate.weight":         RoleOther,
		"model.layers.1.mlp.experts.5.gate_proj.weight":       "gate",
		"model.layers.1.mlp.shared_expert.down_proj.weight":   "down",
		"model.layers.1.mlp.shared_expert_gate.weight":        RoleOther,
		"transformer.blocks.0.ffn.experts.mlp.w1":             "gate",
		"transformer.blocks.0.ffn.experts.mlp.v1":             "up",
		"transformer.blocks.0.ffn.experts.mlp.w2":             "down",
		"model.layers.0.mlp.gate_up_proj.weight":              "gate_up",
		"model.layers.0.self_attn.qkv_proj.weight":            "qkv",
		"transformer.h.0.self_attention.dense.weight":         "o",
		"bert.encoder.layer.0.attention.output.dense.weight":  "o",
		"bert.encoder.layer.0.intermediate.dense.weight":      "up",
		"bert.encoder.layer.0.output.dense.weight":            "down",
		"model.layers.0.self_attn.rotary.weight":              RoleOther,
		"model.embed_tokens.weight":                           RoleOther,
	} {
		assert.Equal(t, want, Role(name), name)
	}
}

// TestCompareTinyPair measures the three methods at ratio 16 on the tiny
// pair: the default method beats both others, the numbers agree with
// Inspect of the kept archives, and plain low rank lands on the numpy
// reference of METHOD.md (0.522 at ratio 16).
func TestCompareTinyPair(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses the tiny pair three times")
	}
	keep := filepath.Join(t.TempDir(), "kept")
	var seen []string
	opt := compareOpts(t, nil, []float64{16}, keep)
	opt.Measured = func(r *CompareRow) { seen = append(seen, r.Method) }
	rows, err := Compare(context.Background(), tinyBase, tinyFT, opt)
	require.NoError(t, err)
	require.Len(t, rows, 3)
	assert.Equal(t, Methods, seen)

	by := map[string]*CompareRow{}
	for i := range rows {
		r := &rows[i]
		by[r.Method] = r
		t.Logf("%-9s ratio %2v: archive %7d bytes, projections %6d bytes (ratio %.2f), error %.4f",
			r.Method, r.Ratio, r.ArchiveBytes, r.ProjStoredBytes, r.ProjRatio(), r.RelError)

		require.Equal(t, filepath.Join(keep, ArchiveName(r.Method, 16)), r.Archive)
		fi, err := os.Stat(r.Archive)
		require.NoError(t, err)
		assert.Equal(t, fi.Size(), r.ArchiveBytes, "bytes are the file's")
		rep, err := Inspect(r.Archive)
		require.NoError(t, err)
		assert.Equal(t, rep.Totals.RelError, r.RelError)
		assert.Equal(t, rep.Totals.OrigBytes, r.OrigBytes)
		assert.Equal(t, 28, r.Projections)
		var stored, orig int64
		for _, tt := range rep.Manifest.Tensors {
			if _, _, ok := tt.DeltaError(); ok {
				stored += tt.StoredBytes()
				orig += tt.Bytes // bf16: the same bytes as fp16
			}
		}
		assert.Equal(t, stored, r.ProjStoredBytes)
		assert.Equal(t, orig, r.ProjFP16Bytes)

		// Seven kinds of four tensors each, and the aggregate is their
		// norm-weighted combination: it lies between the extremes.
		require.Len(t, r.ByRole, 7)
		lo, hi := math.Inf(1), 0.0
		for _, g := range r.ByRole {
			assert.Equal(t, 4, g.Tensors, g.Role)
			lo, hi = min(lo, g.RelError), max(hi, g.RelError)
		}
		assert.GreaterOrEqual(t, r.RelError, lo)
		assert.LessOrEqual(t, r.RelError, hi)
	}
	assert.Zero(t, by[MethodBitDelta].Ratio, "bitdelta reports no asked ratio")
	assert.InDelta(t, 16, by[MethodBitDelta].ProjRatio(), 0.01, "1 bit per weight against 16 bits")
	assert.Equal(t, 16.0, by[MethodLowRank].Ratio)
	assert.GreaterOrEqual(t, by[MethodLowRank].ProjRatio(), 16.0, "honest budget")
	assert.GreaterOrEqual(t, by[MethodDeltaCoMe].ProjRatio(), 16.0, "honest budget")

	assert.Less(t, by[MethodDeltaCoMe].RelError, by[MethodLowRank].RelError)
	assert.Less(t, by[MethodDeltaCoMe].RelError, by[MethodBitDelta].RelError)
	// METHOD.md's numpy reference keeps top-r at 16 bits; bf16 factors differ
	// from fp16 ones by far less than this tolerance.
	assert.InDelta(t, 0.522, by[MethodLowRank].RelError, 0.005)
}

func TestCompareBitDeltaOnce(t *testing.T) {
	rows, err := Compare(context.Background(), tinyBase, tinyFT, compareOpts(t, []string{MethodBitDelta}, []float64{8, 32}, ""))
	require.NoError(t, err)
	require.Len(t, rows, 1, "bitdelta's size does not depend on the ratio")
	assert.Empty(t, rows[0].Archive, "not kept")
	assert.Positive(t, rows[0].ArchiveBytes)
}

func TestCompareRejects(t *testing.T) {
	cases := []struct {
		name    string
		methods []string
		ratios  []float64
	}{
		{"unknown method", []string{"zip"}, []float64{16}},
		{"empty method", []string{""}, []float64{16}},
		{"repeated method", []string{"lowrank", "lowrank"}, []float64{16}},
		{"ratio below 1", []string{"lowrank"}, []float64{0.5}},
		{"NaN ratio", []string{"lowrank"}, []float64{math.NaN()}},
		{"repeated ratio", []string{"lowrank"}, []float64{8, 8}},
		{"no methods", []string{}, []float64{8}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Compare(context.Background(), tinyBase, tinyFT, compareOpts(t, tc.methods, tc.ratios, dir))
			assert.ErrorIs(t, err, ErrUsage)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, entries, "nothing written")
		})
	}
}
