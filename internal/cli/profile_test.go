package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCPUProfileWrittenOnSuccessAndFailure(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"version"}, ExitOK},
		{[]string{"inspect", filepath.Join(dir, "missing.dcm")}, ExitBadInput},
	} {
		path := filepath.Join(dir, tc.args[0]+".prof")
		_, _, code := execute(t, append(tc.args, "--cpuprofile", path)...)
		assert.Equal(t, tc.code, code)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Greater(t, len(data), 2)
		assert.Equal(t, []byte{0x1f, 0x8b}, data[:2], "%v: a finished (gzipped) pprof profile", tc.args)
	}
}
