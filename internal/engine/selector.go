package engine

import (
	"regexp"
)

// The default selection is a rule over the structure of a name, not a list
// of family names: every weight matrix inside a numbered transformer block
// is a projection to compress, except the few kinds of matrix that are not
// projections. Compress also requires a selected tensor to be 2-D and
// floating-point in both checkpoints (lowRankCandidate), which leaves out
// biases, norms (1-D), convolutions (3-D, 4-D) and integer buffers whatever
// their names.
var (
	// DefaultInclude selects any tensor named *.weight inside a numbered
	// block (the block names of layerPattern: model.layers.N.,
	// transformer.h.N., transformer.blocks.N., encoder.layer.N.), and any
	// tensor under experts. inside one (DBRX stores its fused experts as
	// ffn.experts.mlp.w1, without the .weight suffix). This takes the dense
	// projections of every family (q_proj ... down_proj, c_attn, c_fc,
	// query_key_value, dense_h_to_4h, Wqkv, fc1, gate_up_proj, ...) and
	// those of MoE experts and shared experts (Mixtral
	// block_sparse_moe.experts.N.w1, Qwen2-MoE mlp.experts.N.gate_proj and
	// mlp.shared_expert.up_proj, Jamba feed_forward.experts.N.down_proj)
	// with no name to add for the next family.
	DefaultInclude = []string{`(?:^|\.)(?:` + blockNames + `)\.\d+\.(?:.*\.weight|(?:.*\.)?experts\..*)$`}
	// DefaultExclude keeps bit-exact the weights inside a block that are not
	// projections, recognised by the name of the module that owns them:
	// embeddings and position tables (*embed*, wte, wpe, *position*, T5's
	// relative_attention_bias), norms (*norm*, LayerNorm, ln_*), output
	// heads (*head) and MoE routers (Mixtral and Qwen2-MoE gate, Qwen2-MoE
	// shared_expert_gate, Jamba router, DBRX router.layer). Routers are kept
	// exact by choice: a router is n_experts x hidden, about 0.01% of a MoE
	// block (Mixtral: 8 x 4096 against 24 experts of 14336 x 4096), so
	// storing it whole costs next to nothing, while its output picks which
	// experts run, a discrete decision that a lossy delta could flip.
	DefaultExclude = []string{`(?i)(?:^|\.)(?:[^.]*(?:embed|norm|position)[^.]*|wte|wpe|ln_[^.]*|[^.]*head|relative_attention_bias|gate|[^.]*_gate|router(?:\.[^.]+)?)\.weight$`}
)

// Selector decides which tensors are low-rank compressed: a name must match
// one Include pattern and no Exclude pattern.
type Selector struct {
	include, exclude []*regexp.Regexp
	// Include and Exclude are the pattern texts applied, recorded in the
	// manifest: the defaults included when they apply.
	Include, Exclude []string
}

// NewSelector compiles the patterns. A nil include means the default rule:
// DefaultInclude, and DefaultExclude followed by exclude. A non-nil include
// replaces the default rule altogether (DefaultExclude does not apply, so
// that --include can select a router or an embedding on purpose); exclude
// still applies. Errors wrap ErrUsage.
func NewSelector(include, exclude []string) (*Selector, error) {
	if include == nil {
		include = DefaultInclude
		exclude = append(append([]string{}, DefaultExclude...), exclude...)
	}
	s := &Selector{Include: include, Exclude: exclude}
	for _, p := range include {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, errorf(ErrUsage, "--include %q: %v", p, regexpError(err))
		}
		s.include = append(s.include, re)
	}
	for _, p := range exclude {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, errorf(ErrUsage, "--exclude %q: %v", p, regexpError(err))
		}
		s.exclude = append(s.exclude, re)
	}
	return s, nil
}

// Match reports whether the tensor name is selected.
func (s *Selector) Match(name string) bool {
	for _, re := range s.exclude {
		if re.MatchString(name) {
			return false
		}
	}
	for _, re := range s.include {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}
