package cli

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{5 << 20, "5.0 MiB"}, {3 << 30, "3.00 GiB"}, {13_000_000_000, "12.11 GiB"},
	} {
		assert.Equal(t, tc.want, size(tc.n), "%d bytes", tc.n)
	}
}

func TestNaturalCompare(t *testing.T) {
	got := []string{
		"model.layers.10.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight", "lm_head.weight",
		"model.layers.1.mlp.up_proj.weight", "model.layers.02.x", "model.layers.2.mlp.down_proj.weight",
		"model.layers.100.a", "model.layers.9.a", "model.norm.weight",
	}
	slices.SortFunc(got, naturalCompare)
	assert.Equal(t, []string{
		"lm_head.weight",
		"model.layers.1.mlp.up_proj.weight",
		"model.layers.2.mlp.down_proj.weight", "model.layers.2.mlp.up_proj.weight", "model.layers.02.x",
		"model.layers.9.a", "model.layers.10.mlp.up_proj.weight", "model.layers.100.a",
		"model.norm.weight",
	}, got)
}
