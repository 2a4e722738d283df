package archive

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// set replaces the value at path in the decoded JSON v: keys and array
// indices separated by dots ("tensors.3.lowrank.rank").
func set(tb testing.TB, v any, path string, value any) {
	tb.Helper()
	keys := strings.Split(path, ".")
	for i, k := range keys {
		last := i == len(keys)-1
		switch c := v.(type) {
		case map[string]any:
			if last {
				c[k] = value
				return
			}
			v = c[k]
		case []any:
			n, err := strconv.Atoi(k)
			require.NoError(tb, err, path)
			if last {
				c[n] = value
				return
			}
			v = c[n]
		default:
			tb.Fatalf("%s: no container at %q", path, k)
		}
	}
}

// TestValidateRefuses changes one field of a valid archive's manifest at a
// time, re-signing the manifest: Parse refuses each change with an error
// wrapping ErrFormat that names the record and the field.
func TestValidateRefuses(t *testing.T) {
	a := richArchive(t)
	r, err := Parse("rich", a)
	require.NoError(t, err)
	js, err := json.Marshal(r.Manifest)
	require.NoError(t, err)
	const q = "tensors.3"       // the lowrank tensor q_proj
	const lr = q + ".lowrank"   // its record
	const xor = "tensors.1"     // the xor tensor norm
	const same = "tensors.0"    // kind same
	const side = "side_files.0" // config.json
	cases := []struct {
		name, path string
		value      any
		mention    string
	}{
		// validateHeader
		{"mode unknown", "settings.mode", "lossy", "mode"},
		{"method unknown", "settings.method", "svd", "method"},
		{"lossless with a lossy kind", "settings.mode", "lossless", `tensor "q_proj": kind`},
		{"method of another kind", "settings.method", "bitdelta", `tensor "q_proj": kind`},
		{"negative ratio", "settings.ratio", -1, "ratio"},
		{"max error of 1", "settings.max_error", 1, "max_error"},
		{"negative max error", "settings.max_error", -0.5, "max_error"},
		// validateFiles
		{"index with a slash", "layout.index", "a/b.json", "index"},
		{"index is a shard", "layout.index", "model.safetensors", "index"},
		{"shard name empty", "layout.shards.0.file", "", "file"},
		{"shard name dotdot", "layout.shards.0.file", "..", "file"},
		{"shard is a side file", "layout.shards.0.file", "config.json", "name"},
		{"side file backslash", side + ".name", `a\b`, "name"},
		{"side file NUL", side + ".name", "a\x00b", "name"},
		{"side file sha", side + ".sha256", "abc", "sha256"},
		{"side file size negative", side + ".size", -1, "size"},
		{"side file size vs raw size", side + ".size", 3, "raw_size"},
		{"side file shuffle huge", side + ".blob.shuffle", 1 << 36, "shuffle"},
		{"side file role", side + ".blob.role", "data", "role"},
		// validateBase
		{"base fingerprint", "base.fingerprint", "sha256:00", "fingerprint"},
		{"base dtype", "base.tensors.0.dtype", "Q4", "dtype"},
		// validateTensors
		{"tensor name empty", same + ".name", "", "name"},
		{"tensor name twice", xor + ".name", "same", "name"},
		{"shard out of range", xor + ".shard", 1, "shard"},
		{"sha256 uppercase", xor + ".sha256", strings.Repeat("A", 64), "sha256"},
		{"dtype unknown", xor + ".dtype", "F8_E4M3", "dtype"},
		{"shape overflows", "tensors.2.shape", []any{uint64(1) << 62, 16}, "shape"},
		{"bytes vs shape", "tensors.2.bytes", 31, "bytes"},
		{"kind unknown", xor + ".kind", "zip", "kind"},
		{"same with other bytes", same + ".sha256", strings.Repeat("0", 64), "sha256"},
		{"xor over another dtype", "base.tensors.1.dtype", "F16", "fingerprint"},
		{"lowrank record on xor", xor + ".lowrank", map[string]any{"rank": 0}, "lowrank"},
		{"blobs on same", same + ".blobs", []any{map[string]any{"role": "xor"}}, "blobs"},
		{"xor raw size", xor + ".blobs.0.raw_size", 254, "raw_size"},
		{"xor raw size negative", xor + ".blobs.0.raw_size", -1, "size"},
		{"xor codec unknown", xor + ".blobs.0.codec", "lz4", "codec"},
		{"xor shuffle 3", xor + ".blobs.0.shuffle", 3, "shuffle"},
		{"xor shuffle 16", xor + ".blobs.0.shuffle", 16, "shuffle"},
		{"xor role", xor + ".blobs.0.role", "data", "blobs"},
		{"rank above min(rows, cols)", lr + ".rank", 17, "lowrank.rank"},
		{"group size 0", lr + ".group_size", 0, "group_size"},
		{"bands wrap to the rank", lr + ".bands", []any{
			map[string]any{"bits": 2, "count": 1 << 62}, map[string]any{"bits": 2, "count": 1 << 62},
			map[string]any{"bits": 2, "count": 1 << 62}, map[string]any{"bits": 2, "count": (1 << 62) + 2}}, "count"},
		{"bands increase", lr + ".bands", []any{map[string]any{"bits": 2, "count": 1}, map[string]any{"bits": 8, "count": 1}}, "bits"},
		{"band bits 0", lr + ".bands.1.bits", 0, "bits"},
		{"band count 0", lr + ".bands.1.count", 0, "count"},
		{"bands short of the rank", lr + ".bands", []any{map[string]any{"bits": 8, "count": 1}}, "bands"},
		{"group size vs qparams", lr + ".group_size", 4, "raw_size"},
		{"budget below the blobs", lr + ".budget", 97, "budget"},
		{"negative rel_error", lr + ".rel_error", -0.5, "rel_error"},
		{"sigma codec zstd", q + ".blobs.0.codec", "zstd", "codec"},
		{"sigma shorter than the rank", q + ".blobs.0.raw_size", 4, "raw_size"},
		// validateShards
		{"shard header not JSON", "layout.shards.0.header", "not json", "header"},
		{"shard header lacks a tensor", "layout.shards.0.header", "{}", "shards"},
		{"shard header dtype", "layout.shards.0.header", `{"same":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}`, "header"},
		// validateBlobRefs
		{"blob aliases another tensor's", xor + ".blobs.0.tensor", "extra/data", "tensor"},
		{"blob not in the file", xor + ".blobs.0.tensor", "nope", "tensor"},
		{"orphan blob", "side_files", []any{}, "in no record"},
		{"blob size vs file", "tensors.2.blobs.0.size", 1, "size"},
		{"u.qparams dtype in the file", q + ".blobs.2.tensor", "q_proj/v.codes", "tensor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			require.NoError(t, json.Unmarshal(js, &m))
			set(t, m, tc.path, tc.value)
			e, err := json.Marshal(m)
			require.NoError(t, err)
			_, err = Parse("edited", withManifest(t, a, string(e)))
			require.ErrorIs(t, err, ErrFormat)
			assert.Contains(t, err.Error(), tc.mention)
		})
	}
}

// TestValidateAcceptsRankZero checks that a low-rank record of rank 0 (no
// bands, empty blobs) is valid.
func TestValidateAcceptsRankZero(t *testing.T) {
	for _, method := range []string{"deltacome", "lowrank"} {
		b := newBuilder(t, "deltacome", method)
		if method == "deltacome" {
			b.tensor(Tensor{Name: "w", DType: "BF16", Shape: []uint64{3, 5}, Kind: KindLowRank,
				LowRank: &LowRank{GroupSize: 128, RelError: 1, DeltaNorm: 2},
				Blobs: []Blob{
					b.blob(RoleSigma, "w/sigma", nil, CodecRaw, 0, 9, []uint64{0}),
					b.blob(RoleUCodes, "w/u.codes", nil, CodecRaw, 0, 1, nil),
					b.blob(RoleUQParams, "w/u.qparams", nil, CodecRaw, 0, 6, []uint64{0, 2}),
					b.blob(RoleVCodes, "w/v.codes", nil, CodecRaw, 0, 1, nil),
					b.blob(RoleVQParams, "w/v.qparams", nil, CodecRaw, 0, 6, []uint64{0, 2}),
				}}, "BF16")
		} else {
			b.tensor(Tensor{Name: "w", DType: "BF16", Shape: []uint64{3, 5}, Kind: KindLowRankBF16,
				LowRankBF16: &LowRankBF16{RelError: 1, DeltaNorm: 2},
				Blobs: []Blob{
					b.blob(RoleU, "w/u", nil, CodecRaw, 0, 6, []uint64{3, 0}),
					b.blob(RoleV, "w/v", nil, CodecRaw, 0, 6, []uint64{0, 5}),
				}}, "BF16")
		}
		r, err := Open(b.commit())
		require.NoError(t, err, method)
		require.NoError(t, r.Close())
	}
}

// TestValidateLayout checks the layout rules that need more than one
// field changed: a lone file has one shard and no index.
func TestValidateLayout(t *testing.T) {
	a := richArchive(t)
	r, err := Parse("rich", a)
	require.NoError(t, err)
	cases := []struct {
		name string
		edit func(m *Manifest)
	}{
		{"lone file with an index", func(m *Manifest) {
			m.Layout.Folder, m.Layout.Index = false, "model.safetensors.index.json"
		}},
		{"lone file with two shards", func(m *Manifest) {
			m.Layout.Folder = false
			m.Layout.Shards = append(m.Layout.Shards, Shard{File: "b.safetensors", Header: "{}"})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := *r.Manifest
			m.Layout.Shards = slices.Clone(m.Layout.Shards)
			tc.edit(&m)
			e, err := json.Marshal(&m)
			require.NoError(t, err)
			_, err = Parse("edited", withManifest(t, a, string(e)))
			require.ErrorIs(t, err, ErrFormat)
			assert.Contains(t, err.Error(), "layout: folder")
		})
	}
}

func TestIsSHA256AndSafeName(t *testing.T) {
	assert.True(t, isSHA256(strings.Repeat("0a", 32)))
	for _, s := range []string{"", strings.Repeat("0A", 32), strings.Repeat("0", 63), strings.Repeat("g", 64)} {
		assert.False(t, isSHA256(s), s)
	}
	assert.True(t, safeName("config.json"))
	assert.True(t, safeName("..."))
	for _, s := range []string{"", ".", "..", "a/b", `a\b`, "a\x00b"} {
		assert.False(t, safeName(s), s)
	}
}

func TestCeilDiv(t *testing.T) {
	cases := []struct{ a, b, want int64 }{
		{0, 1, 0}, {1, 1, 1}, {7, 8, 1}, {8, 8, 1}, {9, 8, 2},
		{1 << 36, 1<<63 - 1, 1}, // no overflow of a + b - 1
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, ceilDiv(tc.a, tc.b), "%d / %d", tc.a, tc.b)
	}
}

// TestDecodeBlobRefusesBadCodecFields checks that DecodeBlob, which takes
// any Blob record, refuses the fields validation refuses in a manifest:
// a huge shuffle over an empty zstd frame (which used to loop 2^36 times),
// a shuffle on a raw blob, a negative raw size.
func TestDecodeBlobRefusesBadCodecFields(t *testing.T) {
	empty, stored, err := EncodeBlob(RoleSideFile, "empty", nil, CodecZstd, 0)
	require.NoError(t, err)
	raw, rawStored, err := EncodeBlob(RoleData, "raw", []byte{1, 2}, CodecRaw, 0)
	require.NoError(t, err)
	cases := []struct {
		name   string
		b      Blob
		stored []byte
	}{
		{"shuffle 2^36", func() Blob { b := empty; b.Shuffle = 1 << 36; return b }(), stored},
		{"shuffle -1", func() Blob { b := empty; b.Shuffle = -1; return b }(), stored},
		{"raw with shuffle", func() Blob { b := raw; b.Shuffle = 2; return b }(), rawStored},
		{"negative raw size", func() Blob { b := empty; b.RawSize = -1; return b }(), stored},
		{"raw size past the zstd bound", func() Blob { b := empty; b.RawSize = b.Size*maxZstdRatio + 1; return b }(), stored},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeBlob(tc.b, tc.stored)
			require.ErrorIs(t, err, ErrFormat)
		})
	}
}
