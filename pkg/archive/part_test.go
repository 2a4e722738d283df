package archive

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// richPart returns the rich archive made into part 2 of 3: it records all
// its tensors but "same" (which stays listed in the shard header) and the
// base records of "norm" and "q_proj", with no fingerprint.
func richPart(t testing.TB) (archive []byte, manifest map[string]any) {
	t.Helper()
	a := richArchive(t)
	r, err := Parse("rich", a)
	require.NoError(t, err)
	m := *r.Manifest
	m.Format, m.Version = PartFormatName, PartVersion
	m.Tensors = m.Tensors[1:]
	var names []string
	for _, bt := range m.Base.Tensors {
		names = append(names, bt.Name)
	}
	m.Base.Tensors, m.Base.Fingerprint = m.Base.Tensors[1:], ""
	id := "sha256:" + strings.Repeat("ab", 32)
	m.Part = &Part{Index: 2, Count: 3, BaseTensors: names, BaseIdentity: id, FineTuneIdentity: id}
	js, err := json.Marshal(&m)
	require.NoError(t, err)
	var v map[string]any
	require.NoError(t, json.Unmarshal(js, &v))
	return a, v
}

// openPartJSON writes archive a with manifest v and opens it as a part.
func openPartJSON(t *testing.T, a []byte, v map[string]any) (*Reader, error) {
	t.Helper()
	js, err := json.Marshal(v)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "p.dcm")
	require.NoError(t, os.WriteFile(path, withManifest(t, a, string(js)), 0o644))
	return OpenPart(path)
}

func TestPartValid(t *testing.T) {
	a, v := richPart(t)
	r, err := openPartJSON(t, a, v)
	require.NoError(t, err)
	assert.Equal(t, 2, r.Manifest.Part.Index)
	require.NoError(t, r.Close())

	js, err := json.Marshal(v)
	require.NoError(t, err)
	_, err = Parse("p.dcm", withManifest(t, a, string(js)))
	var pe *PartError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, PartError{Path: "p.dcm", Index: 2, Count: 3}, *pe)
	assert.ErrorIs(t, err, ErrPart)
	assert.ErrorIs(t, err, ErrFormat)

	path := filepath.Join(t.TempDir(), "a.dcm")
	require.NoError(t, os.WriteFile(path, richArchive(t), 0o644))
	_, err = OpenPart(path)
	assert.ErrorIs(t, err, ErrFormat)
	assert.ErrorContains(t, err, "an archive, not a part file")
}

// TestPartRefuses changes one field of a valid part at a time: OpenPart
// refuses each change naming the field.
func TestPartRefuses(t *testing.T) {
	cases := []struct {
		name, path string
		value      any
		mention    string
	}{
		{"index 0", "part.index", 0, "part: index"},
		{"index past count", "part.index", 4, "part: index"},
		{"count 0", "part.count", 0, "part: count"},
		{"count huge", "part.count", MaxParts + 1, "part: count"},
		{"base identity", "part.base_identity", "sha256:00", "base_identity"},
		{"fine-tune identity", "part.fine_tune_identity", strings.Repeat("ab", 32), "fine_tune_identity"},
		{"base name twice", "part.base_tensors.1", "same", "base_tensors"},
		{"base record not listed", "part.base_tensors", []any{"same", "extra"}, `base tensor "norm"`},
		{"fingerprint", "base.fingerprint", "sha256:" + strings.Repeat("0", 64), "fingerprint"},
		{"archive format", "format", FormatName, "format"},
		{"no part record", "part", nil, "format"},
		{"tensor not in the header", "tensors.0.name", "gone", "header"},
		{"lossy tensor without its base record", "base.tensors.1.name", "same", `tensor "q_proj"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, v := richPart(t)
			set(t, v, tc.path, tc.value)
			_, err := openPartJSON(t, a, v)
			require.ErrorIs(t, err, ErrFormat)
			assert.Contains(t, err.Error(), tc.mention)
		})
	}

	a, v := richPart(t)
	set(t, v, "version", PartVersion+1)
	_, err := openPartJSON(t, a, v)
	assert.ErrorIs(t, err, ErrVersion)
	assert.ErrorContains(t, err, "part is version 2")
}
