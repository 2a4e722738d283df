package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recipe returns the first sh block after the heading of docs/DISTRIBUTED.md
// that starts with heading.
func recipe(t *testing.T, heading string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "DISTRIBUTED.md"))
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(doc), "\n"+heading)
	require.True(t, ok, "no heading %q", heading)
	m := regexp.MustCompile("(?s)```sh\n(.*?)```").FindStringSubmatch(after)
	require.NotNil(t, m, "no sh block after %q", heading)
	return m[1]
}

// TestXargsRecipe runs the xargs recipe of docs/DISTRIBUTED.md as written,
// with its first line's inputs and flags replaced by the bundled pair and a
// few lossy projections (to keep it fast), and checks that the merged
// archive is byte for byte the one a single compress writes.
func TestXargsRecipe(t *testing.T) {
	bin := binary(t)
	script := recipe(t, "## One machine: xargs -P")
	first, rest, _ := strings.Cut(script, "\n")
	require.True(t, strings.HasPrefix(first, "N="), "the recipe starts by setting N, BASE, FT and FLAGS: %q", first)
	base, err := filepath.Abs(filepath.Join("..", "..", "testdata", "tiny-llama", "base"))
	require.NoError(t, err)
	ft, err := filepath.Abs(filepath.Join("..", "..", "testdata", "tiny-llama", "math"))
	require.NoError(t, err)
	const flags = "--ratio 32 --include layers.[01].self_attn.[qk]_proj"
	script = "N=3 BASE=" + base + " FT=" + ft + ` FLAGS="` + flags + `"` + "\n" + rest

	dir := t.TempDir()
	cmd := exec.Command("sh", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "recipe:\n%s\noutput:\n%s", script, out.String())

	parts, err := filepath.Glob(filepath.Join(dir, "parts", "ft.part*.dcm"))
	require.NoError(t, err)
	assert.Len(t, parts, 3)
	whole := filepath.Join(dir, "whole.dcm")
	args := append([]string{"compress", "-q"}, strings.Fields(flags)...)
	got, err := exec.Command(bin, append(args, base, ft, whole)...).CombinedOutput()
	require.NoError(t, err, "%s", got)
	want, err := os.ReadFile(whole)
	require.NoError(t, err)
	merged, err := os.ReadFile(filepath.Join(dir, "ft.dcm"))
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, merged), "the merged archive differs from the single run")
}
