package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// batchLine is one JSON summary line of scripts/batch-compress.sh.
type batchLine struct {
	Name     string        `json:"name"`
	Status   string        `json:"status"`
	Archive  string        `json:"archive"`
	ExitCode int           `json:"exit_code"`
	Result   *compressJSON `json:"result"`
	Error    string        `json:"error"`
}

// TestBatchScript runs scripts/batch-compress.sh with the built binary on
// the tiny pair: compress, skip when up to date, redo when the settings
// change, go on past a failure with --keep-going, stop at it without.
func TestBatchScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "deltacome")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/deltacome").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "batch-compress.sh"))
	require.NoError(t, err)
	manifest := filepath.Join(dir, "models.txt")
	require.NoError(t, os.WriteFile(manifest, []byte(strings.Join([]string{
		"# name   fine-tune   [flags]",
		"math     " + tinyFT,
		"",
		"broken   " + filepath.Join(dir, "no-such-model"),
		"same     " + tinyBase + "   --workers 1",
	}, "\n")+"\n"), 0o644))
	outDir := filepath.Join(dir, "out")

	run := func(args ...string) ([]batchLine, int) {
		t.Helper()
		cmd := exec.Command(bash, append([]string{script, "--bin", bin}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		var lines []batchLine
		sc := bufio.NewScanner(strings.NewReader(string(stdout)))
		for sc.Scan() {
			var l batchLine
			require.NoError(t, json.Unmarshal(sc.Bytes(), &l), "each line is one JSON object: %s\nstderr: %s", sc.Text(), stderr.String())
			lines = append(lines, l)
		}
		return lines, code
	}
	statuses := func(lines []batchLine) []string {
		var s []string
		for _, l := range lines {
			s = append(s, l.Name+":"+l.Status)
		}
		return s
	}

	lines, code := run("--keep-going", tinyBase, manifest, outDir, "--", "--lossless")
	assert.Equal(t, 1, code, "a model failed")
	require.Equal(t, []string{"math:compressed", "broken:failed", "same:compressed"}, statuses(lines))
	require.NotNil(t, lines[0].Result)
	fi, err := os.Stat(filepath.Join(outDir, "math.dcm"))
	require.NoError(t, err)
	assert.Equal(t, fi.Size(), lines[0].Result.ArchiveSize)
	assert.Equal(t, ExitBadInput, lines[1].ExitCode)
	assert.NotEmpty(t, lines[1].Error)

	lines, code = run("--keep-going", tinyBase, manifest, outDir, "--", "--lossless")
	assert.Equal(t, 1, code)
	assert.Equal(t, []string{"math:up-to-date", "broken:failed", "same:up-to-date"}, statuses(lines))

	lines, code = run(tinyBase, manifest, outDir, "--", "--lossless", "--workers", "2")
	assert.Equal(t, 1, code)
	assert.Equal(t, []string{"math:compressed", "broken:failed"}, statuses(lines), "new settings redo; no --keep-going stops at the failure")

	require.NoError(t, os.Remove(filepath.Join(outDir, "math.dcm")))
	require.NoError(t, os.WriteFile(manifest, []byte("math "+tinyFT+"\n"), 0o644))
	lines, code = run(tinyBase, manifest, outDir, "--", "--lossless", "--workers", "2")
	assert.Equal(t, 0, code)
	assert.Equal(t, []string{"math:compressed"}, statuses(lines), "a missing archive is redone")

	_, code = run(tinyBase, filepath.Join(dir, "no-manifest"), outDir)
	assert.Equal(t, 2, code)
}
