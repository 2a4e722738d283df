package archive

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// sample writes a small archive with one xor tensor and one side file and
// returns its path and the raw bytes of both blobs.
func sample(t *testing.T) (path string, xor, side []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	xor = make([]byte, 4096)
	for i := range xor {
		xor[i] = byte(rng.IntN(4)) // compressible, like XOR of close bf16 values
	}
	side = []byte(`{"model_type": "llama"}`)
	b := newBuilder(t, "lossless", "")
	b.tensor(Tensor{Name: "w", DType: "BF16", Shape: []uint64{2048}, Kind: KindXOR,
		Blobs: []Blob{b.blob(RoleXOR, "w/xor", xor, CodecZstd, 2, safetensors.U8, nil)}}, "BF16")
	b.side("config.json", side, CodecRaw)
	path = b.commit()
	return path, xor, side
}

func TestWriteRead(t *testing.T) {
	path, xor, side := sample(t)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary files left after Commit")

	r, err := Open(path)
	require.NoError(t, err)
	defer r.Close()
	rec := r.Manifest.Tensors[0]
	b, ok := rec.Blob(RoleXOR)
	require.True(t, ok)
	assert.Less(t, b.Size, b.RawSize, "zstd must shrink low-entropy bytes")
	got, err := r.Blob(b)
	require.NoError(t, err)
	assert.Equal(t, xor, got)
	got, err = r.Blob(r.Manifest.SideFiles[0].Blob)
	require.NoError(t, err)
	assert.Equal(t, side, got)

	// Any safetensors reader opens it.
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	st, err := safetensors.Deserialize(raw)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"w/xor", "__side__/config.json"}, st.Names())
}

func TestShuffleRoundTrip(t *testing.T) {
	for _, k := range []int{2, 4, 8} {
		src := make([]byte, 8*k)
		for i := range src {
			src[i] = byte(i)
		}
		b, stored, err := EncodeBlob(RoleData, "x", src, CodecZstd, k)
		require.NoError(t, err)
		got, err := DecodeBlob(b, stored)
		require.NoError(t, err)
		assert.Equal(t, src, got, "shuffle %d", k)
	}
	_, _, err := EncodeBlob(RoleData, "x", make([]byte, 5), CodecZstd, 2)
	assert.Error(t, err, "odd length with shuffle 2")
}

// rewrite replaces the manifest of the archive at path via edit and writes
// the result to a new file.
func rewrite(t *testing.T, path string, edit func(m map[string]any)) string {
	t.Helper()
	f, err := stfile.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(f.Metadata()[MetadataKey]), &m))
	edit(m)
	js, err := json.Marshal(m)
	require.NoError(t, err)
	var infos []stfile.Info
	var data bytes.Buffer
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		d, err := f.Data(n)
		require.NoError(t, err)
		info.Offset = int64(data.Len())
		infos = append(infos, info)
		data.Write(d)
	}
	h, err := stfile.EncodeHeader(infos, map[string]string{MetadataKey: string(js), MetadataCRCKey: ManifestCRC(string(js))})
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, stfile.WriteHeader(&out, h))
	out.Write(data.Bytes())
	p := filepath.Join(t.TempDir(), "edited.dcm")
	require.NoError(t, os.WriteFile(p, out.Bytes(), 0o644))
	return p
}

func TestOpenRejects(t *testing.T) {
	path, _, _ := sample(t)
	cases := []struct {
		name string
		edit func(m map[string]any)
		want error
	}{
		{"future version", func(m map[string]any) { m["version"] = Version + 1 }, ErrVersion},
		{"other format", func(m map[string]any) { m["format"] = "zip" }, ErrFormat},
		{"unknown kind", func(m map[string]any) { tensor(m)["kind"] = "magic" }, ErrFormat},
		{"missing blob", func(m map[string]any) { tensor(m)["blobs"] = []any{} }, ErrFormat},
		{"blob not in file", func(m map[string]any) { blob(m)["tensor"] = "nope" }, ErrFormat},
		{"blob size", func(m map[string]any) { blob(m)["size"] = 1 }, ErrFormat},
		{"shard out of range", func(m map[string]any) { tensor(m)["shard"] = 3 }, ErrFormat},
		{"side file escapes", func(m map[string]any) {
			m["side_files"].([]any)[0].(map[string]any)["name"] = "../evil"
		}, ErrFormat},
		{"duplicate tensor", func(m map[string]any) { m["tensors"] = append(m["tensors"].([]any), tensor(m)) }, ErrFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(rewrite(t, path, tc.edit))
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func tensor(m map[string]any) map[string]any { return m["tensors"].([]any)[0].(map[string]any) }
func blob(m map[string]any) map[string]any   { return tensor(m)["blobs"].([]any)[0].(map[string]any) }

func TestFlippedByteDetected(t *testing.T) {
	path, _, _ := sample(t)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	f, err := stfile.Parse(path, raw)
	require.NoError(t, err)
	info, _ := f.Info("w/xor")
	raw[f.DataOffset()+info.Offset+info.Size/2] ^= 0x10
	bad := filepath.Join(t.TempDir(), "bad.dcm")
	require.NoError(t, os.WriteFile(bad, raw, 0o644))

	r, err := Open(bad)
	require.NoError(t, err, "the header is intact")
	defer r.Close()
	_, err = r.Blob(r.Manifest.Tensors[0].Blobs[0])
	require.ErrorIs(t, err, ErrChecksum)
}

func TestNotAnArchive(t *testing.T) {
	h, err := stfile.EncodeHeader(nil, nil)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, stfile.WriteHeader(&buf, h))
	p := filepath.Join(t.TempDir(), "plain.safetensors")
	require.NoError(t, os.WriteFile(p, buf.Bytes(), 0o644))
	_, err = Open(p)
	require.ErrorIs(t, err, ErrFormat)

	require.NoError(t, os.WriteFile(p, []byte("garbage"), 0o644))
	_, err = Open(p)
	require.ErrorIs(t, err, ErrFormat)
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "a.dcm")
	require.NoError(t, os.WriteFile(old, []byte("older archive"), 0o644))
	w, err := Create(old)
	require.NoError(t, err)
	b, stored, err := EncodeBlob(RoleData, "x", []byte{1, 2, 3}, CodecRaw, 0)
	require.NoError(t, err)
	require.NoError(t, w.Add(b, safetensors.U8, []uint64{3}, stored))
	require.NoError(t, w.Abort())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1)
	got, err := os.ReadFile(old)
	require.NoError(t, err)
	assert.Equal(t, "older archive", string(got), "an older file at the path is untouched")

	// An invalid manifest makes Commit fail and clean up, too.
	w, err = Create(old)
	require.NoError(t, err)
	require.Error(t, w.Commit(&Manifest{Format: "x"}))
	entries, err = os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1)
}
