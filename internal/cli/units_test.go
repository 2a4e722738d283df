package cli

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"2GiB": 2 << 30, "2G": 2 << 30, "2gb": 2 << 30, "1.5GiB": 3 << 29, "512MiB": 512 << 20,
		"512 M": 512 << 20, "4096": 4096, "4096B": 4096, "1KiB": 1024, "1T": 1 << 40,
	} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "GiB", "-1G", "0", "2 parsecs", "1e3G", "nan", "99999999999T"} {
		_, err := parseSize(in)
		assert.Error(t, err, in)
	}
}
