package engine

import (
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/checkpoint"
)

// Shapes of the table below: a hidden size of 64, 8 experts, a 1-D vector.
var (
	matrix = []uint64{64, 64}
	router = []uint64{8, 64}
	vector = []uint64{64}
)

// TestDefaultSelection runs the default rule (name patterns and the 2-D
// floating-point requirement) over tensor names of eight families as
// transformers writes them, plus the other block layouts the rule claims.
func TestDefaultSelection(t *testing.T) {
	sel, err := NewSelector(nil, nil)
	require.NoError(t, err)
	opt := &CompressOptions{Mode: ModeDeltaCoMe, Select: sel}
	cases := []struct {
		family, name string
		shape        []uint64
		want         bool
	}{
		{"llama", "model.embed_tokens.weight", matrix, false},
		{"llama", "model.layers.0.self_attn.q_proj.weight", matrix, true},
		{"llama", "model.layers.0.self_attn.k_proj.weight", matrix, true},
		{"llama", "model.layers.0.self_attn.v_proj.weight", matrix, true},
		{"llama", "model.layers.0.self_attn.o_proj.weight", matrix, true},
		{"llama", "model.layers.0.mlp.gate_proj.weight", matrix, true},
		{"llama", "model.layers.0.mlp.up_proj.weight", matrix, true},
		{"llama", "model.layers.0.mlp.down_proj.weight", matrix, true},
		{"llama", "model.layers.0.input_layernorm.weight", vector, false},
		{"llama", "model.layers.0.post_attention_layernorm.weight", vector, false},
		{"llama", "model.layers.0.self_attn.rotary_emb.inv_freq", vector, false},
		{"llama", "model.norm.weight", vector, false},
		{"llama", "lm_head.weight", matrix, false},
		{"qwen2", "model.layers.11.self_attn.q_proj.weight", matrix, true},
		{"qwen2", "model.layers.11.self_attn.q_proj.bias", vector, false},
		{"qwen2", "model.layers.11.mlp.down_proj.weight", matrix, true},
		{"qwen2", "model.embed_tokens.weight", matrix, false},
		{"mistral", "model.layers.31.self_attn.k_proj.weight", matrix, true},
		{"mistral", "model.layers.31.mlp.up_proj.weight", matrix, true},
		{"mistral", "lm_head.weight", matrix, false},
		{"gemma", "model.layers.2.self_attn.o_proj.weight", matrix, true},
		{"gemma", "model.layers.2.pre_feedforward_layernorm.weight", vector, false},
		{"gemma", "model.layers.2.self_attn.q_norm.weight", vector, false},
		{"gemma", "model.layers.2.self_attn.q_norm.weight", matrix, false}, // by name, whatever its shape
		{"phi3", "model.layers.0.self_attn.qkv_proj.weight", matrix, true},
		{"phi3", "model.layers.0.mlp.gate_up_proj.weight", matrix, true},
		{"phi3", "model.layers.0.mlp.down_proj.weight", matrix, true},
		{"phi3", "model.embed_tokens.weight", matrix, false},
		{"mixtral", "model.layers.0.block_sparse_moe.experts.0.w1.weight", matrix, true},
		{"mixtral", "model.layers.0.block_sparse_moe.experts.7.w2.weight", matrix, true},
		{"mixtral", "model.layers.0.block_sparse_moe.experts.3.w3.weight", matrix, true},
		{"mixtral", "model.layers.0.block_sparse_moe.gate.weight", router, false},
		{"mixtral", "model.layers.0.self_attn.q_proj.weight", matrix, true},
		{"qwen2_moe", "model.layers.1.mlp.experts.59.gate_proj.weight", matrix, true},
		{"qwen2_moe", "model.layers.1.mlp.experts.0.down_proj.weight", matrix, true},
		{"qwen2_moe", "model.layers.1.mlp.shared_expert.up_proj.weight", matrix, true},
		{"qwen2_moe", "model.layers.1.mlp.gate.weight", router, false},
		{"qwen2_moe", "model.layers.1.mlp.shared_expert_gate.weight", []uint64{1, 64}, false},
		{"gpt2", "transformer.wte.weight", matrix, false},
		{"gpt2", "transformer.wpe.weight", matrix, false},
		{"gpt2", "transformer.h.0.ln_1.weight", vector, false},
		{"gpt2", "transformer.h.0.attn.c_attn.weight", matrix, true},
		{"gpt2", "transformer.h.0.attn.c_attn.bias", vector, false},
		{"gpt2", "transformer.h.0.attn.c_proj.weight", matrix, true},
		{"gpt2", "transformer.h.0.mlp.c_fc.weight", matrix, true},
		{"gpt2", "transformer.h.0.mlp.c_proj.weight", matrix, true},
		{"gpt2", "transformer.h.0.attn.bias", []uint64{1, 1, 64, 64}, false},
		{"gpt2", "transformer.ln_f.weight", vector, false},
		{"neox", "gpt_neox.layers.0.attention.query_key_value.weight", matrix, true},
		{"neox", "gpt_neox.layers.0.mlp.dense_4h_to_h.weight", matrix, true},
		{"neox", "embed_out.weight", matrix, false},
		{"dbrx", "transformer.blocks.0.norm_attn_norm.attn.Wqkv.weight", matrix, true},
		{"dbrx", "transformer.blocks.0.ffn.experts.mlp.w1", matrix, true},
		{"dbrx", "transformer.blocks.0.ffn.router.layer.weight", router, false},
		{"jamba", "model.layers.1.feed_forward.experts.2.gate_proj.weight", matrix, true},
		{"jamba", "model.layers.1.feed_forward.router.weight", router, false},
		{"jamba", "model.layers.0.mamba.in_proj.weight", matrix, true},
		{"jamba", "model.layers.0.mamba.A_log", []uint64{64, 16}, false},
		{"t5", "encoder.block.0.layer.0.SelfAttention.q.weight", matrix, true},
		{"t5", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", []uint64{32, 8}, false},
		{"bert", "bert.encoder.layer.3.attention.self.query.weight", matrix, true},
		{"bert", "bert.encoder.layer.3.attention.output.LayerNorm.weight", vector, false},
		{"bert", "bert.embeddings.position_embeddings.weight", matrix, false},
	}
	for _, tc := range cases {
		t.Run(tc.family+"/"+tc.name, func(t *testing.T) {
			tensor := checkpoint.Tensor{Name: tc.name, DType: safetensors.BF16, Shape: tc.shape}
			assert.Equal(t, tc.want, lowRankCandidate(tc.name, tensor, tensor, opt))
		})
	}
}

func TestSelectorOverrides(t *testing.T) {
	const (
		proj   = "model.layers.0.self_attn.q_proj.weight"
		gate   = "model.layers.0.block_sparse_moe.gate.weight"
		embed  = "model.embed_tokens.weight"
		expert = "model.layers.0.block_sparse_moe.experts.0.w1.weight"
	)
	for _, tc := range []struct {
		name             string
		include, exclude []string
		want             map[string]bool
	}{
		{"default", nil, nil, map[string]bool{proj: true, gate: false, embed: false, expert: true}},
		{"exclude adds to the default", nil, []string{`experts`}, map[string]bool{proj: true, gate: false, embed: false, expert: false}},
		{"include replaces the default", []string{`\.gate\.weight$`}, nil, map[string]bool{proj: false, gate: true, embed: false, expert: false}},
		{"include and exclude", []string{`.*`}, []string{`embed`}, map[string]bool{proj: true, gate: true, embed: false, expert: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := NewSelector(tc.include, tc.exclude)
			require.NoError(t, err)
			for name, want := range tc.want {
				assert.Equal(t, want, sel.Match(name), name)
			}
		})
	}
	sel, err := NewSelector(nil, []string{`x`})
	require.NoError(t, err)
	assert.Equal(t, DefaultInclude, sel.Include, "the manifest records the patterns applied")
	assert.Equal(t, append(append([]string{}, DefaultExclude...), "x"), sel.Exclude)
	_, err = NewSelector(nil, []string{`(`})
	assert.ErrorIs(t, err, ErrUsage)
}

// TestEmptySelectionWarning: a pair whose matrices lie in no numbered block
// selects nothing by default, and the warning says how to select them.
func TestEmptySelectionWarning(t *testing.T) {
	spec := tensorSpec{safetensors.BF16, []uint64{2, 2}, []float32{1, 2, 3, 4}}
	base := writeCheckpoint(t, map[string]tensorSpec{"attn.q_proj.weight": spec})
	ft := writeCheckpoint(t, map[string]tensorSpec{"attn.q_proj.weight": spec})
	for _, tc := range []struct {
		name    string
		include []string
		mention string
	}{
		{"default rule", nil, "name the projections with --include"},
		{"include", []string{`nothing`}, `the --include patterns "nothing" match no 2-D`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := deltaOpts(t, 16, "auto")
			var err error
			opt.Select, err = NewSelector(tc.include, nil)
			require.NoError(t, err)
			p, err := Plan(base, ft, opt)
			require.NoError(t, err)
			require.Len(t, p.Warnings, 1)
			assert.Equal(t, WarnEmptySelection, p.Warnings[0].Code)
			assert.Contains(t, p.Warnings[0].Message, tc.mention)
		})
	}
}
