package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestShardFlag(t *testing.T) {
	for _, tc := range []struct {
		flag string
		want string // in the error; "" for accepted
	}{
		{"1/1", ""},
		{"3/8", ""},
		{"0/4", "$((JOB_COMPLETION_INDEX + 1))/4"},
		{"5/4", "the part must be 1 to 4"},
		{"2/0", "the part count must be"},
		{"2", "want i/n"},
		{"a/b", "want i/n"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			s, err := parseShard(tc.flag)
			if tc.want == "" {
				require.NoError(t, err)
				assert.Equal(t, tc.flag, s.String())
				return
			}
			assert.ErrorContains(t, err, tc.want)
			assert.Equal(t, ExitUsage, ExitCode(err))
		})
	}
}

func TestCompressShardMerge(t *testing.T) {
	dir := t.TempDir()
	whole := filepath.Join(dir, "whole.dcm")
	_, stderr, code := execute(t, "compress", "-q", "--lossless", tinyBase, tinyFT, whole)
	require.Equal(t, ExitOK, code, stderr)
	var parts []string
	for i := 1; i <= 3; i++ {
		p := filepath.Join(dir, fmt.Sprintf("part%d.dcm", i))
		stdout, stderr, code := execute(t, "compress", "--json", "--lossless", "--shard", fmt.Sprintf("%d/3", i), tinyBase, tinyFT, p)
		require.Equal(t, ExitOK, code, stderr)
		var sum compressJSON
		require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
		assert.Equal(t, fmt.Sprintf("%d/3", i), sum.Shard)
		parts = append(parts, p)
	}

	out := filepath.Join(dir, "merged.dcm")
	stdout, stderr, code := execute(t, "merge", "--json", parts[1], parts[2], parts[0], out)
	require.Equal(t, ExitOK, code, stderr)
	var sum mergeJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	assert.Equal(t, 3, sum.Parts)
	want, err := os.ReadFile(whole)
	require.NoError(t, err)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.True(t, string(want) == string(got), "merged archive differs from the single run")

	refused(t, dir, []refusal{
		{"missing", []string{"merge", parts[0], parts[2], filepath.Join(dir, "x.dcm")}, ExitBadInput, "missing part 2 of 3"},
		{"repeated", []string{"merge", parts[0], parts[1], parts[1], parts[2], filepath.Join(dir, "x.dcm")}, ExitBadInput, "given 2 times"},
		{"out is a part", []string{"merge", "--force", parts[0], parts[1], parts[2]}, ExitUsage, "is a part file"},
		{"no out", []string{"merge", parts[0]}, ExitUsage, "missing OUT"},
		{"exists", []string{"merge", parts[0], parts[1], parts[2], out}, ExitUsage, "exists"},
		{"inspect a part", []string{"inspect", parts[1]}, ExitBadInput, "is part 2 of 3 of an archive: merge first"},
		{"reconstruct a part", []string{"reconstruct", tinyBase, parts[0], filepath.Join(dir, "rec")}, ExitBadInput, "merge first"},
		{"verify a part", []string{"verify", tinyBase, tinyFT, parts[0]}, ExitBadInput, "merge first"},
	})
}

func TestDryRunShares(t *testing.T) {
	stdout, stderr, code := execute(t, "compress", "--dry-run", "--shard", "2/3", tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, "parts: 3, balanced by the estimated work")
	assert.Contains(t, stdout, "<- --shard 2/3")

	stdout, stderr, code = execute(t, "compress", "--dry-run", "--json", "--shard", "1/4", tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	var plan planJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	require.NotNil(t, plan.Shard)
	require.Len(t, plan.Shard.Parts, 4)
	var share float64
	tensors := 0
	for _, p := range plan.Shard.Parts {
		share += p.WorkShare
		tensors += p.Tensors
	}
	const sumTolerance = 1e-9 // four float64 quotients of one total
	assert.InDelta(t, 1, share, sumTolerance)
	assert.Equal(t, len(plan.Tensors), tensors)
	for _, tn := range plan.Tensors {
		assert.True(t, tn.Part >= 1 && tn.Part <= 4, tn.Name)
	}
	assert.Greater(t, plan.Shard.Speedup, 3.0, "28 similar projections split four ways")
}
