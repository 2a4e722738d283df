package cli

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/archive"
)

// TestMaxErrorRefusals: --max-error contradictions and bad values are usage
// errors (exit 2) that name the problem, and nothing is written.
func TestMaxErrorRefusals(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	out := filepath.Join(dir, "a.dcm")
	refused(t, dir, []refusal{
		{"with ratio", []string{"compress", "--max-error", "0.3", "--ratio", "16", base, ft, out}, ExitUsage, "--max-error and --ratio cannot be combined"},
		{"zero", []string{"compress", "--max-error", "0", base, ft, out}, ExitUsage, "between 0 and 1"},
		{"one", []string{"compress", "--max-error", "1", base, ft, out}, ExitUsage, "between 0 and 1"},
		{"negative", []string{"compress", "--max-error", "-0.2", base, ft, out}, ExitUsage, "between 0 and 1"},
		{"nan", []string{"compress", "--max-error", "NaN", base, ft, out}, ExitUsage, "between 0 and 1"},
		{"shard", []string{"compress", "--max-error", "0.3", "--shard", "1/2", base, ft, out}, ExitUsage, "--shard"},
		{"lossless", []string{"compress", "--max-error", "0.3", "--lossless", base, ft, out}, ExitUsage, "--max-error"},
		{"bitdelta", []string{"compress", "--max-error", "0.3", "--method", "bitdelta", base, ft, out}, ExitUsage, "--max-error"},
		{"model budget in parts", []string{"compress", "--budget", "model", "--shard", "1/2", base, ft, out}, ExitUsage, "--budget model cannot be combined with --shard"},
		{"budget with bitdelta", []string{"compress", "--budget", "model", "--method", "bitdelta", base, ft, out}, ExitUsage, "--budget"},
		{"unknown budget", []string{"compress", "--max-error", "0.3", "--budget", "tensor", base, ft, out}, ExitUsage, "--budget must be one of"},
		{"unreachable", []string{"compress", "--max-error", "0.0001", base, ft, out}, ExitUsage, "cannot be reached"},
		{"unreachable dry run", []string{"compress", "-n", "--max-error", "0.0001", base, ft}, ExitUsage, "cannot be reached"},
	})
}

// TestMaxErrorCommand compresses the bundled pair to a target: the summary
// and the archive record an aggregate error at most the target and the
// target itself, and the dry run's estimate is close to the archive.
func TestMaxErrorCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "a.dcm")
	const target = 0.45
	// The first layer's projections: every shape, a quarter of the time.
	layer0 := []string{"--include", `^model\.layers\.0\..*_proj\.weight$`}
	stdout, stderr, code := execute(t, append([]string{"compress", "--json", "--max-error", "0.45", tinyBase, tinyFT, out}, layer0...)...)
	require.Equal(t, ExitOK, code, stderr)
	var res compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	assert.LessOrEqual(t, res.RelError, target)
	assert.Equal(t, target, res.MaxError)

	insp, stderr, code := execute(t, "inspect", "--json", out)
	require.Equal(t, ExitOK, code, stderr)
	var rep inspectJSON
	require.NoError(t, json.Unmarshal([]byte(insp), &rep))
	require.NotNil(t, rep.Totals.RelError)
	assert.LessOrEqual(t, *rep.Totals.RelError, target)
	assert.Equal(t, target, rep.Settings.MaxError)
	assert.Equal(t, "model", rep.Settings.Budget)
	assert.Zero(t, rep.Settings.Ratio)

	stdout, stderr, code = execute(t, append([]string{"compress", "-n", "--json", "--max-error", "0.45", tinyBase, tinyFT}, layer0...)...)
	require.Equal(t, ExitOK, code, stderr)
	var plan planJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	require.NotNil(t, plan.Estimate)
	assert.Equal(t, target, plan.Settings.MaxError)
	assert.LessOrEqual(t, plan.Estimate.RelError, target)
	// The first pass predicts each projection's bytes from the allocation
	// alone; the archive's match them within 0.1% here.
	lossy := rep.ByKind[archive.KindLowRankSym].StoredBytes
	assert.InEpsilon(t, float64(lossy), float64(plan.Estimate.LossyBytes), 0.001)
	assert.InDelta(t, *rep.Totals.RelError, plan.Estimate.RelError, 0.002)

	base, ft := writePair(t, dir, nil)
	stdout, stderr, code = execute(t, "compress", "-n", "--max-error", "0.7", "--budget", "matrix", base, ft)
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, "estimated archive size: about")
	assert.Contains(t, stdout, "budget matrix")

	stdout, stderr, code = execute(t, "compress", "-n", "--json", "--ratio", "32", "--budget", "model", base, ft)
	require.Equal(t, ExitOK, code, stderr)
	plan = planJSON{}
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	require.NotNil(t, plan.Estimate)
	assert.Equal(t, "model", plan.Settings.Budget)
	assert.Equal(t, 32.0, plan.Settings.Ratio)
	assert.Zero(t, plan.Settings.MaxError)
	var budgets, shares int64
	for _, tn := range plan.Tensors {
		if tn.Kind == archive.KindLowRank {
			budgets += tn.Budget
			shares += int64(tn.Shape[0] * tn.Shape[1] * 2 / 32)
			assert.Equal(t, tn.Budget, tn.MaxBytes, "at a ratio the budget is a bound")
		}
	}
	assert.LessOrEqual(t, budgets, shares)
}
