package engine

import (
	"regexp"
)

// DefaultInclude lists the name patterns of the linear projections that are
// low-rank compressed by default: Llama / Mistral / Qwen / Gemma
// (`*_proj.weight`), GPT-2 (`c_attn`, `c_proj`, `c_fc`), GPT-NeoX / Falcon
// (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`) and Phi /
// OPT style (`fc1`, `fc2`, `Wqkv`, `out_proj`). Only 2-D floating-point
// tensors are ever considered; embeddings, lm_head, norms and biases never
// match.
var DefaultInclude = []string{
	`_proj\.weight$`,
	`\.(c_attn|c_proj|c_fc)\.weight$`,
	`\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$`,
	`\.(fc1|fc2|Wqkv|out_proj)\.weight$`,
}

// Selector decides which tensors are low-rank compressed: a name must match
// one Include pattern and no Exclude pattern.
type Selector struct {
	include, exclude []*regexp.Regexp
	// Include and Exclude are the pattern texts, recorded in the manifest.
	Include, Exclude []string
}

// NewSelector compiles the patterns; nil include means DefaultInclude.
func NewSelector(include, exclude []string) (*Selector, error) {
	if include == nil {
		include = DefaultInclude
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
