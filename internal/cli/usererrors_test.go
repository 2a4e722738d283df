package cli

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/engine"
)

// digestTree hashes every file under dir by path, so that a test can show
// that a command left its inputs exactly as they were.
func digestTree(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = sha256.Sum256(b)
		return err
	}))
	return out
}

// refusal is a command line that must fail with exit code want and an
// error that mentions a text.
type refusal struct {
	name    string
	args    []string
	want    int
	mention string
}

// refused runs each command line and checks its exit code and message, that
// the message names no temporary file, and that nothing under dir changed.
func refused(t *testing.T, dir string, cases []refusal) {
	t.Helper()
	before := digestTree(t, dir)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err, code := executeErr(t, tc.args...)
			require.Error(t, err)
			assert.Equal(t, tc.want, code, err)
			assert.Contains(t, err.Error(), tc.mention)
			assert.NotContains(t, err.Error(), ".spool-", "no temporary names")
			assert.NotContains(t, err.Error(), ".tmp-", "no temporary names")
			assert.Equal(t, before, digestTree(t, dir), "inputs untouched, nothing written")
		})
	}
}

// TestInputsAreSacred: an output that is, links to, or lies inside an input
// is refused (exit 2) before any work, whatever --force says, and every
// input stays byte-identical; an existing OUT needs --force.
func TestInputsAreSacred(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	baseFile := filepath.Join(base, "model.safetensors")
	single := filepath.Join(dir, "single.safetensors")
	b, err := os.ReadFile(baseFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(single, b, 0o644))
	link := filepath.Join(dir, "link.dcm")
	require.NoError(t, os.Symlink(single, link))
	arch := filepath.Join(dir, "a.dcm")
	_, stderr, code := execute(t, "compress", "-q", base, ft, arch)
	require.Equal(t, ExitOK, code, stderr)
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o644))

	refused(t, dir, []refusal{
		{"compress over the base file", []string{"compress", single, ft, single}, ExitUsage, "is the input"},
		{"compress over the base file, forced", []string{"compress", "--force", single, ft, single}, ExitUsage, "is the input"},
		{"compress over a link to the base", []string{"compress", "--force", single, ft, link}, ExitUsage, "is the input"},
		{"compress over the base's shard", []string{"compress", "--force", base, ft, baseFile}, ExitUsage, "inside the input folder"},
		{"compress into the fine-tune folder", []string{"compress", base, ft, filepath.Join(ft, "new.dcm")}, ExitUsage, "inside the input folder"},
		{"compress onto the fine-tune folder", []string{"compress", "--force", base, ft, ft}, ExitUsage, "is the input"},
		{"compress over an existing archive", []string{"compress", base, ft, arch}, ExitUsage, "use --force"},
		{"compress onto a folder", []string{"compress", base, ft, dir}, ExitUsage, "is a folder"},
		{"compress into a missing folder", []string{"compress", base, ft, filepath.Join(dir, "nope", "a.dcm")}, ExitUsage, "does not exist"},
		{"compress under a file", []string{"compress", base, ft, filepath.Join(file, "a.dcm")}, ExitUsage, "is not a folder"},
		{"reconstruct into the base folder", []string{"reconstruct", base, arch, filepath.Join(base, "out")}, ExitUsage, "inside the input folder"},
		{"reconstruct onto the archive", []string{"reconstruct", base, arch, arch}, ExitUsage, "is the input"},
		{"reconstruct onto a file", []string{"reconstruct", base, arch, file}, ExitUsage, "is a file"},
		{"reconstruct into a missing folder", []string{"reconstruct", base, arch, filepath.Join(dir, "nope", "out")}, ExitUsage, "does not exist"},
	})

	_, stderr, code = execute(t, "compress", "-q", "--force", base, ft, arch)
	assert.Equal(t, ExitOK, code, stderr)
}

// TestFlagsRefusedBeforeWork: contradictory flags and numbers that make no
// sense are usage errors (exit 2) in the user's terms.
func TestFlagsRefusedBeforeWork(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	out := filepath.Join(dir, "a.dcm")
	for _, tc := range []struct {
		name    string
		args    []string
		mention string
	}{
		{"lossless with a ratio", []string{"--lossless", "--ratio", "8"}, "--ratio does not apply"},
		{"lossless with a schedule", []string{"--lossless", "--schedule", "paper"}, "--schedule does not apply"},
		{"bitdelta with a ratio", []string{"--method", "bitdelta", "--ratio", "8"}, "--ratio does not apply"},
		{"lowrank with a group size", []string{"--method", "lowrank", "--group-size", "64"}, "--group-size does not apply"},
		{"infinite ratio", []string{"--ratio", "inf"}, "--ratio must be a number >= 1"},
		{"NaN ratio", []string{"--ratio", "NaN"}, "--ratio must be a number >= 1"},
		{"ratio below 1", []string{"--ratio", "0.5"}, "--ratio must be a number >= 1"},
		{"ratio not a number", []string{"--ratio", "abc"}, `--ratio "abc": must be a number`},
		{"workers not a number", []string{"--workers", "two"}, `--workers "two": must be a whole number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"compress"}, tc.args...), base, ft, out)
			err, code := executeErr(t, args...)
			require.Error(t, err)
			assert.Equal(t, ExitUsage, code, err)
			assert.Contains(t, err.Error(), tc.mention)
			assert.NotContains(t, err.Error(), "strconv")
			assert.NoFileExists(t, out)
		})
	}
}

// TestUsageMessages: missing arguments are named, unknown commands exit 2,
// --version answers.
func TestUsageMessages(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    int
		mention string
	}{
		{[]string{"compress", "a"}, ExitUsage, "missing FT and OUT"},
		{[]string{"compress", "a", "b"}, ExitUsage, "missing OUT"},
		{[]string{"reconstruct", "a", "b"}, ExitUsage, "missing OUTDIR"},
		{[]string{"inspect"}, ExitUsage, "missing ARCHIVE"},
		{[]string{"inspect", "a", "b"}, ExitUsage, `unexpected argument "b"`},
		{[]string{"compres", "a", "b", "c"}, ExitUsage, `unknown command "compres" (did you mean "compress"?)`},
		{[]string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err, code := executeErr(t, tc.args...)
			require.Error(t, err)
			assert.Equal(t, tc.want, code)
			assert.Contains(t, err.Error(), tc.mention)
		})
	}
	stdout, _, code := execute(t, "--version")
	assert.Equal(t, ExitOK, code)
	assert.Equal(t, "deltacome "+Version+"\n", stdout)
}

// compressWarnings runs compress --json and returns its warning codes.
func compressWarnings(t *testing.T, args ...string) (codes []string, stderr string) {
	t.Helper()
	stdout, stderr, code := execute(t, append([]string{"compress", "--json"}, args...)...)
	require.Equal(t, ExitOK, code, stderr)
	var sum compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	require.NotNil(t, sum.Warnings, "warnings is a list, never null")
	for _, w := range sum.Warnings {
		codes = append(codes, w.Code)
		assert.Contains(t, stderr, "warning: "+w.Message, "each warning is also on stderr")
	}
	return codes, stderr
}

// TestWarnings: what would surprise a user is said, on stderr and in the
// JSON summary, and only then.
func TestWarnings(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	renamedBase, _ := writePair(t, filepath.Join(dir, "renamed"), func(b, _ []stTensor) {
		for i := range b {
			b[i].name = strings.Replace(b[i].name, "model.", "transformer.", 1)
		}
	})
	out := func(name string) string { return filepath.Join(dir, name+".dcm") }

	codes, _ := compressWarnings(t, base, ft, out("plain"))
	assert.Empty(t, codes, "a plain pair warns of nothing")

	codes, _ = compressWarnings(t, "--include", `\.nothing\.weight$`, base, ft, out("empty"))
	assert.Equal(t, []string{engine.WarnEmptySelection}, codes)

	codes, _ = compressWarnings(t, "--ratio", "1.5", base, ft, out("low"))
	assert.Equal(t, []string{engine.WarnLowRatio}, codes)

	codes, stderr := compressWarnings(t, "--ratio", "10000", base, ft, out("zero"))
	assert.Equal(t, []string{engine.WarnRankZero}, codes)
	assert.Contains(t, stderr, "model.layers.0.self_attn.q_proj.weight")

	codes, stderr = compressWarnings(t, renamedBase, ft, out("renamed"))
	assert.Contains(t, codes, engine.WarnUnmatchedNames)
	assert.Contains(t, stderr, "is "+renamedBase+" the base of "+ft+"?")

	_, stderr, code := execute(t, "compress", "-q", "--ratio", "10000", base, ft, out("quiet"))
	require.Equal(t, ExitOK, code)
	assert.Empty(t, stderr, "--quiet prints nothing but errors")

	codes, _ = compressWarnings(t, base, base, out("same"))
	assert.Equal(t, []string{engine.WarnSameInput}, codes)

	stdout, _, code := execute(t, "compress", "--dry-run", "--ratio", "10000", base, ft)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "warning: at --ratio 10000 the budget of 1 of 1 selected projections")
}

// TestInspectReadsLikeAPerson: sizes in KiB/MiB, layers in numeric order,
// the base's source named.
func TestInspectReadsLikeAPerson(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, stderr, code := execute(t, "compress", "-q", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	stdout, _, code := execute(t, "inspect", arch)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "base:      base, sha256:")
	assert.Regexp(t, `model\.layers\.0\.self_attn\.q_proj\.weight +384x384 +BF16 +lowrank-sym +[0-9.]+ KiB +288\.0 KiB`, stdout)
	i1, i3 := strings.Index(stdout, "model.layers.1.mlp"), strings.Index(stdout, "model.layers.3.mlp")
	require.True(t, i1 >= 0 && i3 >= 0)
	assert.Less(t, i1, i3)
}

// TestUserMistakes: arguments in the wrong order, the wrong kind of file,
// a model in another format: each gets a message that says what to do,
// the documented exit code, and nothing written.
func TestUserMistakes(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	arch := filepath.Join(dir, "a.dcm")
	_, stderr, code := execute(t, "compress", "-q", base, ft, arch)
	require.Equal(t, ExitOK, code, stderr)
	binOnly := filepath.Join(dir, "bin-only")
	require.NoError(t, os.MkdirAll(binOnly, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(binOnly, "pytorch_model.bin"), []byte("x"), 0o644))
	cache := filepath.Join(dir, "models--org--name")
	require.NoError(t, os.MkdirAll(filepath.Join(cache, "snapshots", "abc"), 0o755))
	text := filepath.Join(dir, "notes.safetensors")
	require.NoError(t, os.WriteFile(text, []byte("these are not the weights you are looking for"), 0o644))
	out := filepath.Join(dir, "out")

	refused(t, dir, []refusal{
		{"reconstruct with archive and base swapped", []string{"reconstruct", arch, base, out}, ExitBadInput, "is a folder, not an archive file: are the arguments in the right order?"},
		{"verify with archive and fine-tune swapped", []string{"verify", base, arch, ft}, ExitBadInput, "is a folder, not an archive file"},
		{"inspect a folder", []string{"inspect", base}, ExitBadInput, "is a folder, not an archive file"},
		{"archive given as the fine-tune", []string{"compress", base, arch, out + ".dcm"}, ExitBadInput, "is a deltacome archive, not a checkpoint"},
		{"a missing fine-tune", []string{"compress", base, filepath.Join(dir, "nope"), out + ".dcm"}, ExitBadInput, "does not exist"},
		{"a missing archive", []string{"reconstruct", base, filepath.Join(dir, "nope.dcm"), out}, ExitBadInput, "archive " + filepath.Join(dir, "nope.dcm") + " does not exist"},
		{"a PyTorch folder", []string{"compress", base, binOnly, out + ".dcm"}, ExitBadInput, "holds pytorch_model.bin, which deltacome does not read"},
		{"a Hugging Face cache entry", []string{"compress", base, cache, out + ".dcm"}, ExitBadInput, "give its snapshots/<revision> folder"},
		{"a text file as checkpoint", []string{"compress", base, text, out + ".dcm"}, ExitBadInput, `not a safetensors file: its first 8 bytes`},
		{"a bad pattern", []string{"compress", "--include", "(", base, ft, out + ".dcm"}, ExitUsage, `--include "(": not a valid regular expression`},
	})
}
