package engine

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/archivetest"
	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/pkg/archive"
)

// fuzzArchive is a valid archive of the small pair and the paths of its
// manifest's values.
type fuzzArchive struct {
	raw      []byte
	manifest string
	paths    []string
}

// fuzzArchives returns the archives of the test vectors (testdata/vectors:
// every storage kind, rank 0 included, and a side file) and the base they
// were made against.
func fuzzArchives(f *testing.F) ([]fuzzArchive, string) {
	var out []fuzzArchive
	for _, a := range vectorArchives {
		raw, err := os.ReadFile(filepath.Join(vectorsDir, a.file))
		require.NoError(f, err)
		js, err := archivetest.Manifest(raw)
		require.NoError(f, err)
		paths, err := archivetest.Paths(js)
		require.NoError(f, err)
		out = append(out, fuzzArchive{raw: raw, manifest: js, paths: paths})
	}
	return out, filepath.Join(vectorsDir, "base")
}

// FuzzCraftedArchive changes one manifest value of a valid archive of each
// storage kind, re-signs the manifest, and runs what inspect, verify and
// reconstruct run on it: Open with its validation, the report, the shard
// plan, then a decode in memory of every tensor and side file against the
// base (with --force's path where the base check fails). None may panic or
// hang; every error must wrap a sentinel of pkg/archive or of this
// package's inputs. The fuzzer picks the archive, the value's path (an
// index into every path of the manifest, shard headers' entries included)
// and the new value (JSON, else a string). Seeds: every change of
// archivetest.Refused, and the headers of testdata/stfile's files as shard
// headers.
func FuzzCraftedArchive(f *testing.F) {
	archives, basePath := fuzzArchives(f)
	for i, a := range archives {
		muts, err := archivetest.Refused(a.manifest)
		require.NoError(f, err)
		for _, m := range muts {
			v, err := json.Marshal(m.Value)
			require.NoError(f, err)
			if j := slices.Index(a.paths, m.Path); j >= 0 && m.Value != archivetest.Delete {
				f.Add(uint8(i), uint16(j), string(v))
			}
		}
	}
	files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "stfile", "*.safetensors"))
	require.NoError(f, err)
	header := slices.Index(archives[0].paths, "/layout/shards/0/header")
	require.GreaterOrEqual(f, header, 0)
	for _, p := range files {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		if len(b) >= 8 {
			n := min(binary.LittleEndian.Uint64(b), uint64(len(b)-8))
			v, err := json.Marshal(string(b[8 : 8+n]))
			require.NoError(f, err)
			f.Add(uint8(0), uint16(header), string(v))
		}
	}
	base, err := checkpoint.Open(basePath)
	require.NoError(f, err)
	f.Cleanup(func() { base.Close() })

	f.Fuzz(func(t *testing.T, which uint8, path uint16, value string) {
		a := archives[int(which)%len(archives)]
		m := archivetest.Mutation{Path: a.paths[int(path)%len(a.paths)], Value: value}
		var v any
		if json.Unmarshal([]byte(value), &v) == nil {
			m.Value = json.RawMessage(value)
		}
		js, err := archivetest.Apply(a.manifest, m)
		if err != nil {
			t.Skip("the value does not fit the path")
		}
		raw, err := archivetest.Resign(a.raw, js)
		if err != nil {
			t.Skip("the manifest is not a safetensors metadata string")
		}
		decodeAll(t, raw, base)
	})
}

// decodeAll runs the reading and decoding of inspect, verify and
// reconstruct on the archive bytes raw against base, failing t on an
// error that wraps none of the input sentinels.
func decodeAll(t *testing.T, raw []byte, base *checkpoint.Checkpoint) {
	sentinel := func(err error) {
		t.Helper()
		for _, s := range []error{archive.ErrFormat, archive.ErrVersion, archive.ErrChecksum, ErrWrongBase, ErrInput} {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error wraps no input sentinel: %v", err)
	}
	ar, err := archive.Parse("fuzz", raw)
	if err != nil {
		sentinel(err)
		return
	}
	defer ar.Close()
	m := ar.Manifest
	_ = report("fuzz", ar)
	if _, _, err := planShards(m); err != nil {
		t.Fatalf("an accepted manifest has a bad shard plan: %v", err)
	}
	force := false
	if err := checkBaseLayout(base, m, false); err != nil {
		sentinel(err)
		force = true
	}
	baseRec := make(map[string]archive.BaseTensor, len(m.Base.Tensors))
	for _, bt := range m.Base.Tensors {
		baseRec[bt.Name] = bt
	}
	for i := range m.Tensors {
		rec := &m.Tensors[i]
		out, err := decodeTensor(ar, base, rec, baseRec, m, force, newBuffer)
		base.Release(rec.Name)
		if err != nil {
			sentinel(err)
			continue
		}
		if int64(len(out)) != rec.Bytes {
			t.Fatalf("tensor %q: decoded %d bytes, the record says %d", rec.Name, len(out), rec.Bytes)
		}
	}
	for _, sf := range m.SideFiles {
		if _, err := ar.Blob(sf.Blob); err != nil {
			sentinel(err)
		}
	}
}
