package engine

import (
	"regexp"
	"strconv"
)

// RoleOther is the role of a tensor no projection family matches:
// embeddings, norms, lm_head, MoE routers and anything unknown.
const RoleOther = "other"

// roles lists the projection families in report order, each with the name
// pattern that puts a tensor in it; the first match wins. The patterns look
// at the last name components only, so the same projection inside a MoE
// expert (Mixtral block_sparse_moe.experts.N.w1, Qwen2-MoE
// mlp.experts.N.gate_proj and mlp.shared_expert.up_proj, DBRX
// ffn.experts.mlp.w1, stored without ".weight") gets the role of its dense
// counterpart. Names follow Llama / Mistral / Qwen / Gemma (q_proj ...
// down_proj), DeepSeek (q_a_proj, q_b_proj), Mixtral experts and original
// Llama (w1 gate, w3 up, w2 down, wq wk wv wo), DBRX experts (w1 gate, v1
// up, w2 down), GPT-2 (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj),
// GPT-NeoX / Falcon / ChatGLM (query_key_value, attention.dense or
// self_attention.dense, dense_h_to_4h, dense_4h_to_h), BERT (query, key,
// value, attention.output.dense, intermediate.dense, output.dense), Phi-3
// (qkv_proj, gate_up_proj), InternLM2 (wqkv) and Phi / OPT (Wqkv, out_proj,
// fc1, fc2).
var roles = []struct {
	name    string
	pattern *regexp.Regexp
}{
	{"q", regexp.MustCompile(`\.(q_proj|q_a_proj|q_b_proj|query|wq)\.weight$`)},
	{"k", regexp.MustCompile(`\.(k_proj|key|wk)\.weight$`)},
	{"v", regexp.MustCompile(`\.(v_proj|value|wv)\.weight$`)},
	{"qkv", regexp.MustCompile(`\.(qkv_proj|c_attn|query_key_value|Wqkv|wqkv)\.weight$`)},
	{"o", regexp.MustCompile(`\.(o_proj|out_proj|wo)\.weight$|\.attn\.c_proj\.weight$|\.(attention|self_attn|self_attention)\.dense\.weight$|\.attention\.output\.dense\.weight$`)},
	{"gate_up", regexp.MustCompile(`\.gate_up_proj\.weight$`)},
	{"gate", regexp.MustCompile(`\.(gate_proj|w1)(\.weight)?$`)},
	{"up", regexp.MustCompile(`\.(up_proj|w3|fc1|c_fc|dense_h_to_4h)\.weight$|\.intermediate\.dense\.weight$|\.experts\.mlp\.v1$`)},
	{"down", regexp.MustCompile(`\.(down_proj|w2|fc2|dense_4h_to_h)(\.weight)?$|\.mlp\.c_proj\.weight$|\.output\.dense\.weight$`)},
}

// Role returns the projection family of a tensor name (q, k, v, qkv, o,
// gate_up, gate, up, down), or RoleOther.
func Role(name string) string {
	for _, r := range roles {
		if r.pattern.MatchString(name) {
			return r.name
		}
	}
	return RoleOther
}

// Roles lists every role in report order, RoleOther last.
func Roles() []string {
	names := make([]string, 0, len(roles)+1)
	for _, r := range roles {
		names = append(names, r.name)
	}
	return append(names, RoleOther)
}

// blockNames are the names under which checkpoints number their transformer
// blocks: model.layers.12 (Llama and most others), transformer.h.3 (GPT-2,
// Falcon, BLOOM), transformer.blocks.7 (MPT, DBRX), encoder.layer.5 (BERT).
// layerPattern and the default selection (DefaultInclude) share them.
const blockNames = `layers|h|blocks|layer`

// layerPattern finds the block index in names such as
// model.layers.12.mlp.up_proj.weight, transformer.h.3.attn.c_proj.weight,
// gpt_neox.layers.7... or encoder.layer.5...
var layerPattern = regexp.MustCompile(`(?:^|\.)(?:` + blockNames + `)\.(\d{1,9})\.`)

// Layer returns the block index in a tensor name, or -1 when it has none.
func Layer(name string) int {
	m := layerPattern.FindStringSubmatch(name)
	if m == nil {
		return -1
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return -1
	}
	return n
}
