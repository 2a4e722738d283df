package archive

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// richArchive returns the bytes of a small archive holding the storage
// kinds same, xor, full and lowrank, and a side file. The low-rank blobs
// are random bytes of the right sizes: this package does not interpret
// them.
func richArchive(tb testing.TB) []byte {
	tb.Helper()
	rng := rand.New(rand.NewPCG(6, 6))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	b := newBuilder(tb, "deltacome", "")
	b.m.Settings = Settings{Mode: "deltacome", Ratio: 4, Schedule: "auto", GroupSize: 8, SVD: "exact"}
	xor := make([]byte, 256)
	xor[17], xor[200] = 3, 1
	b.tensor(Tensor{Name: "same", DType: "BF16", Shape: []uint64{4}, Kind: KindSame}, "BF16")
	b.tensor(Tensor{Name: "norm", DType: "BF16", Shape: []uint64{128}, Kind: KindXOR,
		Blobs: []Blob{b.blob(RoleXOR, "norm/xor", xor, CodecZstd, 2, safetensors.U8, nil)}}, "BF16")
	b.tensor(Tensor{Name: "extra", DType: "F32", Shape: []uint64{8}, Kind: KindFull,
		Blobs: []Blob{b.blob(RoleData, "extra/data", random(32), CodecZstd, 4, safetensors.U8, nil)}}, "")
	b.tensor(Tensor{Name: "q_proj", DType: "BF16", Shape: []uint64{16, 24}, Kind: KindLowRank,
		LowRank: &LowRank{Rank: 2, Bands: []Band{{Bits: 8, Count: 1}, {Bits: 2, Count: 1}}, GroupSize: 8, Budget: 192},
		Blobs: []Blob{
			b.blob(RoleSigma, "q_proj/sigma", random(8), CodecRaw, 0, safetensors.F32, []uint64{2}),
			b.blob(RoleUCodes, "q_proj/u.codes", random(20), CodecRaw, 0, safetensors.U8, nil),
			b.blob(RoleUQParams, "q_proj/u.qparams", random(16), CodecRaw, 0, safetensors.BF16, []uint64{4, 2}),
			b.blob(RoleVCodes, "q_proj/v.codes", random(30), CodecRaw, 0, safetensors.U8, nil),
			b.blob(RoleVQParams, "q_proj/v.qparams", random(24), CodecRaw, 0, safetensors.BF16, []uint64{6, 2}),
		}}, "BF16")
	b.side("config.json", []byte(`{"model_type": "llama"}`), CodecZstd)
	raw, err := os.ReadFile(b.commit())
	require.NoError(tb, err)
	return raw
}

// boundaries returns the offsets where a's structure changes: inside and
// after the length prefix, inside the header, at the start of the data and
// at the start and middle of every blob, and the end.
func boundaries(tb testing.TB, a []byte) []int {
	tb.Helper()
	f, err := stfile.Parse("a", a)
	require.NoError(tb, err)
	data := int(f.DataOffset())
	cuts := []int{0, 1, 7, 8, 9, data / 2, data - 1, data}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		cuts = append(cuts, data+int(info.Offset), data+int(info.Offset+info.Size/2))
	}
	return append(cuts, len(a)-1)
}

// readAll opens buf and reads every blob it names, checking that any error
// wraps one of the package's sentinels and that an accepted manifest keeps
// the promises validate makes.
func readAll(t *testing.T, buf []byte) {
	r, err := Parse("fuzz", buf)
	if err != nil {
		if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("Parse error wraps no sentinel: %v", err)
		}
		return
	}
	defer r.Close()
	m := r.Manifest
	require.Equal(t, FormatName, m.Format)
	require.LessOrEqual(t, m.Version, Version)
	names := map[string]bool{}
	for _, rec := range m.Tensors {
		require.False(t, names[rec.Name], "tensor %q accepted twice", rec.Name)
		names[rec.Name] = true
		require.True(t, rec.Shard >= 0 && rec.Shard < len(m.Layout.Shards), "tensor %q shard %d", rec.Name, rec.Shard)
		for _, b := range rec.Blobs {
			readBlob(t, r, b)
		}
	}
	for _, s := range m.SideFiles {
		require.True(t, safeName(s.Name), "side file name %q accepted", s.Name)
		readBlob(t, r, s.Blob)
	}
	for _, s := range m.Layout.Shards {
		require.True(t, safeName(s.File), "shard file name %q accepted", s.File)
	}
}

func readBlob(t *testing.T, r *Reader, b Blob) {
	got, err := r.Blob(b)
	if err != nil {
		if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("Blob error wraps no sentinel: %v", err)
		}
		return
	}
	require.Equal(t, b.RawSize, int64(len(got)), "blob %q", b.Tensor)
}

// FuzzParse feeds arbitrary bytes to the archive reader: it must refuse them
// with a sentinel error or read them consistently, never panic. Seeds: a
// valid archive holding every kind, that archive cut at each structural
// boundary, with flipped bytes, and the stfile package's broken files.
func FuzzParse(f *testing.F) {
	a := richArchive(f)
	f.Add(a)
	f.Add([]byte{})
	for _, n := range boundaries(f, a) {
		f.Add(bytes.Clone(a[:n]))
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 16 {
		b := bytes.Clone(a)
		b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		f.Add(b)
	}
	files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "stfile", "*.safetensors"))
	require.NoError(f, err)
	vectors, err := filepath.Glob(filepath.Join("..", "..", "testdata", "vectors", "*.dcm")) // every storage kind
	require.NoError(f, err)
	for _, p := range append(files, vectors...) {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(readAll)
}

// withManifest returns archive a with its manifest replaced by js and the
// manifest checksum recomputed, so that the fuzzer explores the manifest
// checks behind the checksum.
func withManifest(tb testing.TB, a []byte, js string) []byte {
	tb.Helper()
	f, err := stfile.Parse("a", a)
	require.NoError(tb, err)
	var infos []stfile.Info
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		infos = append(infos, info)
	}
	h, err := stfile.EncodeHeader(infos, map[string]string{MetadataKey: js, MetadataCRCKey: ManifestCRC(js)})
	require.NoError(tb, err)
	var out bytes.Buffer
	require.NoError(tb, stfile.WriteHeader(&out, h))
	out.Write(a[f.DataOffset():])
	return out.Bytes()
}

// FuzzManifest feeds arbitrary manifests, with a matching checksum, over the
// blobs of a valid archive: each must be refused with a sentinel error or
// read consistently. Seeds: the archive's manifest and edits of it that the
// reader refuses.
func FuzzManifest(f *testing.F) {
	a := richArchive(f)
	r, err := Parse("rich", a)
	require.NoError(f, err)
	js, err := json.Marshal(r.Manifest)
	require.NoError(f, err)
	f.Add(string(js))
	_, part := richPart(f) // validated as a part, then refused as one
	pjs, err := json.Marshal(part)
	require.NoError(f, err)
	f.Add(string(pjs))
	var m map[string]any
	require.NoError(f, json.Unmarshal(js, &m))
	for _, edit := range manifestEdits {
		var c map[string]any
		require.NoError(f, json.Unmarshal(js, &c))
		edit(c)
		e, err := json.Marshal(c)
		require.NoError(f, err)
		f.Add(string(e))
	}
	f.Fuzz(func(t *testing.T, js string) {
		if !utf8.ValidString(js) {
			t.Skip("safetensors metadata is UTF-8")
		}
		readAll(t, withManifest(t, a, js))
	})
}

// manifestEdits are manifest changes the reader must refuse; they seed
// FuzzManifest and are checked in TestManifestEditsRefused.
var manifestEdits = map[string]func(m map[string]any){
	"future version":   func(m map[string]any) { m["version"] = Version + 1 },
	"version zero":     func(m map[string]any) { m["version"] = 0 },
	"huge raw size":    func(m map[string]any) { richBlob(m, 1)["raw_size"] = 32 << 30 },
	"negative size":    func(m map[string]any) { richBlob(m, 1)["size"] = -1 },
	"rank vs bands":    func(m map[string]any) { richTensor(m, 3)["lowrank"].(map[string]any)["rank"] = 3 },
	"no lowrank":       func(m map[string]any) { delete(richTensor(m, 3), "lowrank") },
	"bits 9":           func(m map[string]any) { richBand(m)["bits"] = 9 },
	"count 0":          func(m map[string]any) { richBand(m)["count"] = 0 },
	"no shards":        func(m map[string]any) { m["layout"].(map[string]any)["shards"] = []any{} },
	"shard name slash": func(m map[string]any) { richShard(m)["file"] = "a/b" },
	"shard is side":    func(m map[string]any) { richShard(m)["file"] = "config.json" },
	"negative shard":   func(m map[string]any) { richTensor(m, 1)["shard"] = -1 },
	"codec unknown":    func(m map[string]any) { richBlob(m, 1)["codec"] = "lz4" },
	"side dotdot":      func(m map[string]any) { m["side_files"].([]any)[0].(map[string]any)["name"] = ".." },
	"tensors not list": func(m map[string]any) { m["tensors"] = "x" },
}

func richTensor(m map[string]any, i int) map[string]any {
	return m["tensors"].([]any)[i].(map[string]any)
}
func richBlob(m map[string]any, i int) map[string]any {
	return richTensor(m, i)["blobs"].([]any)[0].(map[string]any)
}
func richBand(m map[string]any) map[string]any {
	return richTensor(m, 3)["lowrank"].(map[string]any)["bands"].([]any)[0].(map[string]any)
}
func richShard(m map[string]any) map[string]any {
	return m["layout"].(map[string]any)["shards"].([]any)[0].(map[string]any)
}

// TestManifestEditsRefused checks that every edit seeding FuzzManifest is
// refused, by Parse or when the edited blob is read.
func TestManifestEditsRefused(t *testing.T) {
	a := richArchive(t)
	r, err := Parse("rich", a)
	require.NoError(t, err)
	js, err := json.Marshal(r.Manifest)
	require.NoError(t, err)
	for name, edit := range manifestEdits {
		t.Run(name, func(t *testing.T) {
			var m map[string]any
			require.NoError(t, json.Unmarshal(js, &m))
			edit(m)
			e, err := json.Marshal(m)
			require.NoError(t, err)
			r, err := Parse("edited", withManifest(t, a, string(e)))
			if err == nil {
				var blobErr error
				for _, rec := range r.Manifest.Tensors {
					for _, b := range rec.Blobs {
						if _, err := r.Blob(b); err != nil {
							blobErr = err
						}
					}
				}
				err = blobErr
			}
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrFormat) || errors.Is(err, ErrVersion), "%v", err)
		})
	}
}

// TestManifestChecksum checks that any change to the manifest bytes that
// keeps it valid JSON is caught by the manifest checksum, and that an
// archive without the checksum is refused.
func TestManifestChecksum(t *testing.T) {
	a := richArchive(t)
	f, err := stfile.Parse("a", a)
	require.NoError(t, err)
	js := f.Metadata()[MetadataKey]
	var infos []stfile.Info
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		infos = append(infos, info)
	}
	build := func(md map[string]string) []byte {
		h, err := stfile.EncodeHeader(infos, md)
		require.NoError(t, err)
		var out bytes.Buffer
		require.NoError(t, stfile.WriteHeader(&out, h))
		out.Write(a[f.DataOffset():])
		return out.Bytes()
	}
	// A side file renamed: still a valid manifest, silently wrong without
	// the checksum.
	renamed := bytes.Replace([]byte(js), []byte(`"config.json"`), []byte(`"config.jsom"`), 1)
	require.NotEqual(t, js, string(renamed))
	_, err = Parse("renamed", build(map[string]string{MetadataKey: string(renamed), MetadataCRCKey: ManifestCRC(js)}))
	require.ErrorIs(t, err, ErrChecksum)

	_, err = Parse("unsummed", build(map[string]string{MetadataKey: js}))
	require.ErrorIs(t, err, ErrFormat)

	_, err = Parse("intact", build(map[string]string{MetadataKey: js, MetadataCRCKey: ManifestCRC(js)}))
	require.NoError(t, err)
}

// TestCutArchive cuts a valid archive at every structural boundary and at
// every byte of its header: Parse refuses each prefix.
func TestCutArchive(t *testing.T) {
	a := richArchive(t)
	cuts := boundaries(t, a)
	hlen := int(binary.LittleEndian.Uint64(a))
	for n := 0; n < 8+hlen; n++ {
		cuts = append(cuts, n)
	}
	for _, n := range cuts {
		_, err := Parse("cut", a[:n])
		require.ErrorIs(t, err, ErrFormat, "cut at %d of %d", n, len(a))
	}
}

// TestFlippedByteAnywhere flips each byte of a valid archive in turn: the
// change is refused by Parse or by the checksum of the blob it lands in, or
// it is in header padding and changes nothing that is read.
func TestFlippedByteAnywhere(t *testing.T) {
	a := richArchive(t)
	good, err := Parse("good", a)
	require.NoError(t, err)
	want := map[string][]byte{}
	for _, rec := range good.Manifest.Tensors {
		for _, b := range rec.Blobs {
			want[b.Tensor], err = good.Blob(b)
			require.NoError(t, err)
		}
	}
	for i := range a {
		b := bytes.Clone(a)
		b[i] ^= 0xff
		r, err := Parse("flipped", b)
		if err != nil {
			require.True(t, errors.Is(err, ErrFormat) || errors.Is(err, ErrChecksum), "byte %d: %v", i, err)
			continue
		}
		require.Equal(t, good.Manifest, r.Manifest, "byte %d: a changed manifest was accepted", i)
		for _, rec := range r.Manifest.Tensors {
			for _, bl := range rec.Blobs {
				got, err := r.Blob(bl)
				if err != nil {
					require.ErrorIs(t, err, ErrChecksum, "byte %d", i)
					continue
				}
				require.Equal(t, want[bl.Tensor], got, "byte %d: blob %q silently changed", i, bl.Tensor)
			}
		}
	}
}
