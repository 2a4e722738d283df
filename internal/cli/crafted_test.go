package cli

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/archivetest"
)

// craftedTimeout bounds one command on one crafted archive: a valid
// archive of the small pair takes milliseconds, so a command still running
// after this long hangs.
const craftedTimeout = 20 * time.Second

// TestCraftedArchives changes one manifest field at a time of archives
// made by compress with each method and --lossless, re-signing the
// manifest checksum so that the change reaches validation (the mutations
// of archivetest.Refused: every field of every record kind, side files,
// shard headers and layout). inspect, verify and reconstruct must each
// refuse every one with exit code 3, without panicking or hanging, and
// leave nothing on disk. Run with -v to see the table of mutations and
// messages.
func TestCraftedArchives(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	made := []struct {
		name string
		args []string
	}{
		{"deltacome", []string{"--ratio", "2"}},
		{"rank0", []string{"--ratio", "5000"}},
		{"bitdelta", []string{"--method", "bitdelta"}},
		{"lowrank", []string{"--method", "lowrank", "--ratio", "2"}},
		{"lossless", []string{"--lossless"}},
	}
	crafted := filepath.Join(dir, "crafted")
	require.NoError(t, os.MkdirAll(crafted, 0o755))
	out := filepath.Join(dir, "out")
	total := 0
	for _, mk := range made {
		arch := filepath.Join(dir, mk.name+".dcm")
		args := append([]string{"compress", "-q"}, mk.args...)
		_, code := executeErr(t, append(args, base, ft, arch)...)
		require.Equal(t, ExitOK, code, mk.name)
		raw, err := os.ReadFile(arch)
		require.NoError(t, err)
		js, err := archivetest.Manifest(raw)
		require.NoError(t, err)
		muts, err := archivetest.Refused(js)
		require.NoError(t, err)
		for _, cmd := range [][]string{{"inspect", arch}, {"verify", base, ft, arch}, {"reconstruct", "-q", base, arch, out}} {
			_, code := executeTimed(t, cmd...)
			require.Equal(t, ExitOK, code, "%s of the intact %s archive", cmd[0], mk.name)
		}
		require.NoError(t, os.RemoveAll(out))
		for i, mut := range muts {
			total++
			t.Run(mk.name+"/"+mut.String(), func(t *testing.T) {
				edited, err := archivetest.Apply(js, mut)
				require.NoError(t, err)
				b, err := archivetest.Resign(raw, edited)
				require.NoError(t, err)
				p := filepath.Join(crafted, mk.name+"-"+strconv.Itoa(i)+".dcm")
				require.NoError(t, os.WriteFile(p, b, 0o644))
				defer os.Remove(p)
				before := tree(t, dir)
				for _, cmd := range [][]string{
					{"inspect", p},
					{"verify", base, ft, p},
					{"reconstruct", "-q", base, p, out},
				} {
					err, code := executeTimed(t, cmd...)
					t.Logf("| %s | %s | %d | %v |", mut, cmd[0], code, err)
					require.Equal(t, ExitBadInput, code, "%s: %v", cmd[0], err)
				}
				assert.Equal(t, before, tree(t, dir), "nothing left behind")
			})
		}
	}
	t.Logf("%d crafted archives", total)
	require.Greater(t, total, 100)
}

// executeTimed is executeErr, failing the test when the command has not
// returned after craftedTimeout.
func executeTimed(t *testing.T, args ...string) (error, int) {
	t.Helper()
	type result struct {
		err  error
		code int
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{code: -1}
				t.Errorf("%v: panic: %v", args, r)
			}
		}()
		err, code := executeErr(t, args...)
		done <- result{err, code}
	}()
	select {
	case r := <-done:
		return r.err, r.code
	case <-time.After(craftedTimeout):
		t.Fatalf("%v: no answer after %v", args, craftedTimeout)
		return nil, 0
	}
}
