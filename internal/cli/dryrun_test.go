package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/archive"
)

func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "never.dcm")
	stdout, stderr, code := execute(t, "compress", "--dry-run", "--json", "--ratio", "32", tinyBase, tinyFT, out)
	require.Equal(t, ExitOK, code, stderr)
	var plan planJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	assert.Equal(t, 28, plan.ByKind[archive.KindLowRankSym].Tensors)
	for _, tn := range plan.Tensors {
		if tn.Kind == archive.KindLowRankSym {
			assert.Equal(t, int64(tn.Shape[0]*tn.Shape[1]*2/32), tn.Budget, tn.Name)
		}
	}
	assert.Greater(t, plan.MaxArchiveBytes, plan.ByKind[archive.KindLowRankSym].MaxBytes)
	assert.NoFileExists(t, out, "--dry-run writes nothing")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "not even a temporary file")

	stdout, stderr, code = execute(t, "compress", "-n", tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, "predicted archive size: at most")

	_, _, code = execute(t, "compress", tinyBase, tinyFT)
	assert.Equal(t, ExitUsage, code, "OUT is needed without --dry-run")
}

func TestFingerprintCommand(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, stderr, code := execute(t, "compress", "--lossless", "-q", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	stdout, stderr, code := execute(t, "fingerprint", tinyBase)
	require.Equal(t, ExitOK, code, stderr)
	insp, _, _ := execute(t, "inspect", "--json", arch)
	var rep inspectJSON
	require.NoError(t, json.Unmarshal([]byte(insp), &rep))
	assert.Equal(t, rep.Base.Fingerprint+"  "+tinyBase+"\n", stdout, "the fingerprint an archive records for its base")

	quick1, _, code := execute(t, "fingerprint", "--quick", tinyBase, tinyFT)
	require.Equal(t, ExitOK, code)
	quick2, _, _ := execute(t, "fingerprint", "--quick", tinyBase, tinyFT)
	assert.Equal(t, quick1, quick2)
	assert.Regexp(t, `^quick:[0-9a-f]{64}  `, quick1)

	_, _, code = execute(t, "fingerprint")
	assert.Equal(t, ExitUsage, code)
	_, _, code = execute(t, "fingerprint", filepath.Join(dir, "missing"))
	assert.Equal(t, ExitBadInput, code)
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		stdout, stderr, code := execute(t, "completion", shell)
		require.Equal(t, ExitOK, code, stderr)
		assert.Contains(t, stdout, "deltacome", shell)
	}
}
