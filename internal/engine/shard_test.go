package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// compressParts writes parts 1..n of the archive of base and ft into dir
// and returns their paths in part order.
func compressParts(t *testing.T, dir, base, ft string, opt CompressOptions, n int) []string {
	t.Helper()
	var paths []string
	for i := 1; i <= n; i++ {
		o := opt
		o.Shard = Shard{Index: i, Count: n}
		p := filepath.Join(dir, fmt.Sprintf("part-%d-of-%d.dcm", i, n))
		_, err := Compress(context.Background(), base, ft, p, o)
		require.NoError(t, err, "part %d/%d", i, n)
		paths = append(paths, p)
	}
	return paths
}

func TestShardMergeByteIdentical(t *testing.T) {
	lossy := deltaOpts(t, 16, "auto")
	var err error // a few projections of layers 0 and 1 keep the test in seconds; the rest is stored bit-exact
	lossy.Select, err = NewSelector([]string{`layers\.[01]\.self_attn\.[kv]_proj`}, nil)
	require.NoError(t, err)
	cases := []struct {
		name     string
		base, ft string
		opt      CompressOptions
	}{
		{"lossy", tinyBase, tinyFT, lossy},
		{"lossless", tinyBase, tinyFT, losslessOpts()},
		{"sharded checkpoints", shardedCopy(t, tinyBase, 2), shardedCopy(t, tinyFT, 3), losslessOpts()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			whole := filepath.Join(dir, "whole.dcm")
			_, err := Compress(context.Background(), tc.base, tc.ft, whole, tc.opt)
			require.NoError(t, err)
			want, err := os.ReadFile(whole)
			require.NoError(t, err)

			parts := compressParts(t, dir, tc.base, tc.ft, tc.opt, 3)
			for _, order := range [][]int{{0, 1, 2}, {2, 0, 1}, {1, 2, 0}} {
				out := filepath.Join(dir, fmt.Sprint("merged", order, ".dcm"))
				given := []string{parts[order[0]], parts[order[1]], parts[order[2]]}
				sum, err := Merge(context.Background(), given, out, MergeOptions{})
				require.NoError(t, err, "order %v", order)
				got, err := os.ReadFile(out)
				require.NoError(t, err)
				assert.True(t, string(got) == string(want), "order %v: merged archive differs from the single run", order)
				assert.Equal(t, int64(len(want)), sum.ArchiveSize)
			}
		})
	}
}
