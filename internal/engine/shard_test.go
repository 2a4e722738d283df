package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/archive"
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
	bitDelta := deltaOpts(t, 16, "auto")
	bitDelta.Method = MethodBitDelta
	calibrated := lossy
	calibrated.Calibration = writeStats(t, calibSites(t, tinyFT, 512, 2), 512, "")
	shardedBase, shardedFT := shardedCopy(t, tinyBase, 2), shardedCopy(t, tinyFT, 3)
	cases := []struct {
		name     string
		base, ft string
		opt      CompressOptions
	}{
		{"lossy", tinyBase, tinyFT, lossy},
		{"lossy, calibrated", tinyBase, tinyFT, calibrated},
		{"lossless", tinyBase, tinyFT, losslessOpts()},
		{"sharded checkpoints, lossy", shardedBase, shardedFT, lossy},
		{"sharded checkpoints, lossless", shardedBase, shardedFT, losslessOpts()},
		{"sharded checkpoints, bitdelta", shardedBase, shardedFT, bitDelta},
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

func TestMergeRefusesBadSets(t *testing.T) {
	dir := t.TempDir()
	opt := losslessOpts()
	parts := compressParts(t, dir, tinyBase, tinyFT, opt, 3)
	twoParts := compressParts(t, t.TempDir(), tinyBase, tinyFT, opt, 2)
	otherFT := compressParts(t, t.TempDir(), tinyBase, tinyBase, opt, 3) // same layout, other weights
	otherTool := opt
	otherTool.Tool = "test 2"
	newerTool := compressParts(t, t.TempDir(), tinyBase, tinyFT, otherTool, 3)
	whole := filepath.Join(dir, "whole.dcm")
	_, err := Compress(context.Background(), tinyBase, tinyFT, whole, opt)
	require.NoError(t, err)

	cases := []struct {
		name     string
		given    []string
		missing  []int
		repeated int
		foreign  []ForeignPart
	}{
		{"missing", []string{parts[2], parts[0]}, []int{2}, 0, nil},
		{"repeated", []string{parts[0], parts[1], parts[1], parts[2]}, nil, 1, nil},
		{"other part count", []string{parts[0], parts[1], parts[2], twoParts[1]}, nil, 0, []ForeignPart{{twoParts[1], "part count"}}},
		{"other fine-tune", []string{parts[0], otherFT[1], parts[2]}, []int{2}, 0, []ForeignPart{{otherFT[1], "fine-tune"}}},
		{"other tool", []string{newerTool[0], parts[1], parts[2]}, []int{1}, 0, []ForeignPart{{newerTool[0], "tool"}}},
		{"majority decides", []string{otherFT[0], otherFT[1], parts[2]}, []int{3}, 0, []ForeignPart{{parts[2], "fine-tune"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.dcm")
			_, err := Merge(context.Background(), tc.given, out, MergeOptions{})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInput)
			var se *PartSetError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tc.missing, se.Missing)
			assert.Len(t, se.Repeated, tc.repeated)
			assert.Equal(t, tc.foreign, se.Foreign)
			assert.NoFileExists(t, out)
			assert.Empty(t, fileNames(t, filepath.Dir(out)), "nothing written")
		})
	}

	t.Run("an archive", func(t *testing.T) {
		_, err := Merge(context.Background(), []string{parts[0], whole}, filepath.Join(t.TempDir(), "out.dcm"), MergeOptions{})
		assert.ErrorIs(t, err, archive.ErrFormat)
		assert.ErrorContains(t, err, "not a part file")
	})
	t.Run("absent", func(t *testing.T) {
		_, err := Merge(context.Background(), []string{parts[0], filepath.Join(dir, "nope.dcm")}, filepath.Join(t.TempDir(), "out.dcm"), MergeOptions{})
		assert.ErrorIs(t, err, ErrInput)
	})
}

func TestPartRefusedAsArchive(t *testing.T) {
	parts := compressParts(t, t.TempDir(), tinyBase, tinyFT, losslessOpts(), 2)
	ctx := context.Background()
	_, rerr := Reconstruct(ctx, tinyBase, parts[1], filepath.Join(t.TempDir(), "out"), ReconstructOptions{})
	_, verr := Verify(ctx, tinyBase, tinyFT, parts[1], VerifyOptions{})
	_, ierr := Inspect(parts[1])
	for name, err := range map[string]error{"reconstruct": rerr, "verify": verr, "inspect": ierr} {
		assert.ErrorIs(t, err, archive.ErrPart, name)
		assert.ErrorIs(t, err, archive.ErrFormat, name)
		assert.ErrorContains(t, err, "is part 2 of 2 of an archive: merge first", name)
	}
	r, err := archive.OpenPart(parts[0])
	require.NoError(t, err)
	assert.Equal(t, 1, r.Manifest.Part.Index)
	require.NoError(t, r.Close())
}

func TestAssignBalancesWork(t *testing.T) {
	base, ft := openTinyPair(t)
	opt := deltaOpts(t, 16, "auto")
	side, _, err := ft.SideFiles()
	require.NoError(t, err)
	var largest int64
	for _, name := range ft.Names() {
		c, err := classify(base, ft, name, &opt)
		require.NoError(t, err)
		tt, _ := ft.Tensor(name)
		bt, _ := base.Tensor(name)
		largest = max(largest, workCost(tt, bt, c, &opt))
	}
	for _, n := range []int{1, 2, 3, 4, 7} {
		a, err := assign(base, ft, side, &opt, n)
		require.NoError(t, err)
		again, err := assign(base, ft, side, &opt, n)
		require.NoError(t, err)
		assert.Equal(t, a, again, "deterministic")
		assert.Len(t, a.ft, ft.Len(), "every tensor in one part")
		var total, most int64
		for _, s := range a.shares {
			total += s.Work
			most = max(most, s.Work)
		}
		// Longest processing time first is within 4/3 of the optimum, which
		// is at least the mean share and the largest item.
		assert.LessOrEqual(t, float64(most), 4.0/3*max(float64(total)/float64(n), float64(largest)), "n=%d", n)
	}
}

// TestMergeRefusesDamagedPart flips a byte of a blob of one part: the blob's
// checksum fails while it is copied, and the merge leaves nothing behind.
func TestMergeRefusesDamagedPart(t *testing.T) {
	dir := t.TempDir()
	parts := compressParts(t, dir, tinyBase, tinyFT, losslessOpts(), 2)
	b, err := os.ReadFile(parts[1])
	require.NoError(t, err)
	b[len(b)-100] ^= 0x40 // inside the last blobs, past the header
	require.NoError(t, os.WriteFile(parts[1], b, 0o644))

	out := filepath.Join(dir, "out.dcm")
	_, err = Merge(context.Background(), parts, out, MergeOptions{})
	assert.ErrorIs(t, err, archive.ErrChecksum)
	assert.ErrorContains(t, err, parts[1])
	assert.ElementsMatch(t, []string{filepath.Base(parts[0]), filepath.Base(parts[1])}, fileNames(t, dir), "no archive, no temporary file")
}
