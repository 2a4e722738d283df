package cli

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/archivetest"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// executeErr runs args through the root command as main does and returns
// the error main would print and the exit code.
func executeErr(t *testing.T, args ...string) (error, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewRootCmd(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return err, ExitCode(err)
}

type stTensor struct {
	name  string
	dt    safetensors.DType
	shape []uint64
	vals  []float32
}

// writeST writes a safetensors file of ts, in order, at path.
func writeST(t *testing.T, path string, ts ...stTensor) {
	t.Helper()
	raw := make([]rawTensor, len(ts))
	for i, s := range ts {
		raw[i] = rawTensor{name: s.name, dt: s.dt, shape: s.shape, data: make([]byte, len(s.vals)*int(s.dt.Size()))}
		require.NoError(t, dtype.Encode(raw[i].data, s.vals, s.dt))
	}
	writeRaw(t, path, raw)
}

// pairTensors returns the tensors of a small base and fine-tune: a
// projection (low rank), a changed norm (xor), an unchanged embedding (same)
// and a tensor only in the fine-tune (full). edit may change the fine-tune's.
func pairTensors(edit func(base, ft []stTensor)) (base, ft []stTensor) {
	rng := rand.New(rand.NewPCG(9, 9))
	normal := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 0.02)
		}
		return x
	}
	q, emb := normal(48*64), normal(8*64)
	fq := slices.Clone(q)
	for i, d := range normal(len(q)) {
		fq[i] += d / 10
	}
	norm := make([]float32, 64)
	for i := range norm {
		norm[i] = 1
	}
	fnorm := slices.Clone(norm)
	fnorm[3] = 1.5
	base = []stTensor{
		{"model.embed_tokens.weight", safetensors.BF16, []uint64{8, 64}, emb},
		{"model.layers.0.norm.weight", safetensors.BF16, []uint64{64}, norm},
		{"model.layers.0.self_attn.q_proj.weight", safetensors.BF16, []uint64{48, 64}, q},
	}
	ft = []stTensor{
		{"model.embed_tokens.weight", safetensors.BF16, []uint64{8, 64}, emb},
		{"model.layers.0.norm.weight", safetensors.BF16, []uint64{64}, fnorm},
		{"model.layers.0.self_attn.q_proj.weight", safetensors.BF16, []uint64{48, 64}, fq},
		{"score.bias", safetensors.F32, []uint64{2}, []float32{1, 2}},
	}
	if edit != nil {
		edit(base, ft)
	}
	return base, ft
}

// writePair writes the pair as folders BASE and FT (FT with a config.json)
// under dir.
func writePair(t *testing.T, dir string, edit func(base, ft []stTensor)) (base, ft string) {
	t.Helper()
	b, f := pairTensors(edit)
	base, ft = filepath.Join(dir, "base"), filepath.Join(dir, "ft")
	writeST(t, filepath.Join(base, "model.safetensors"), b...)
	writeST(t, filepath.Join(ft, "model.safetensors"), f...)
	require.NoError(t, os.WriteFile(filepath.Join(ft, "config.json"), []byte(`{"model_type": "llama"}`), 0o644))
	return base, ft
}

// tree lists every path under dir.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		out = append(out, p)
		return err
	}))
	return out
}

// hostileCase is one bad input: the command line to run, the exit code it
// must give, and a text the error must hold (file, tensor, problem).
type hostileCase struct {
	name    string
	args    []string
	want    int
	mention string
	// mention2, when set, is a second text the error must hold.
	mention2 string
}

// damaged returns a copy of the archive at arch changed by edit, written
// next to it under name.
func damaged(t *testing.T, arch, name string, edit func(raw []byte, f *stfile.File) []byte) string {
	t.Helper()
	raw, err := os.ReadFile(arch)
	require.NoError(t, err)
	f, err := stfile.Parse(arch, raw)
	require.NoError(t, err)
	p := filepath.Join(filepath.Dir(arch), name)
	require.NoError(t, os.WriteFile(p, edit(bytes.Clone(raw), f), 0o644))
	return p
}

// flipBlob flips one bit in the middle of the archive blob named blob.
func flipBlob(blob string) func(raw []byte, f *stfile.File) []byte {
	return func(raw []byte, f *stfile.File) []byte {
		info, ok := f.Info(blob)
		if !ok {
			panic("test archive has no blob " + blob)
		}
		raw[f.DataOffset()+info.Offset+info.Size/2] ^= 0x10
		return raw
	}
}

// newManifest rewrites the manifest through edit, with a valid checksum
// when sum is true (a deliberate change) and the old one otherwise (damage).
func newManifest(edit func(js string) string, sum bool) func(raw []byte, f *stfile.File) []byte {
	return func(raw []byte, _ *stfile.File) []byte {
		b, err := archivetest.EditMetadata(raw, func(md map[string]string) {
			js := edit(md[archive.MetadataKey])
			md[archive.MetadataKey] = js
			if sum {
				md[archive.MetadataCRCKey] = archive.ManifestCRC(js)
			}
		})
		if err != nil {
			panic(err)
		}
		return b
	}
}

// TestHostileInputs runs every kind of bad input through the command line:
// each gives its documented exit code and an error naming what is wrong,
// none panics, and none leaves output or temporary files behind. Run with
// -v to see the table of inputs, exit codes and messages.
func TestHostileInputs(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	pair := func(name string, edit func(base, ft []stTensor)) (string, string) {
		return writePair(t, filepath.Join(dir, name), edit)
	}
	out := func(name string) string { return filepath.Join(dir, "out", name) }
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "out"), 0o755))

	arch := filepath.Join(dir, "good.dcm")
	_, code := executeErr(t, "compress", "-q", "--ratio", "2", base, ft, arch)
	require.Equal(t, ExitOK, code)
	raw, err := os.ReadFile(arch)
	require.NoError(t, err)
	f, err := stfile.Parse(arch, raw)
	require.NoError(t, err)
	hlen := int(f.DataOffset())

	var cases []hostileCase
	add := func(name string, want int, mention string, args ...string) {
		cases = append(cases, hostileCase{name: name, args: args, want: want, mention: mention})
	}

	// Broken safetensors files, as FT and as BASE.
	broken, err := filepath.Glob(filepath.Join("..", "..", "testdata", "stfile", "broken-*.safetensors"))
	require.NoError(t, err)
	require.NotEmpty(t, broken)
	for _, p := range broken {
		n := strings.TrimSuffix(filepath.Base(p), ".safetensors")
		add("FT "+n, ExitBadInput, filepath.Base(p), "compress", base, p, out("x.dcm"))
	}
	for _, p := range broken[:3] {
		n := strings.TrimSuffix(filepath.Base(p), ".safetensors")
		add("BASE "+n, ExitBadInput, filepath.Base(p), "compress", p, ft, out("x.dcm"))
		add("reconstruct onto BASE "+n, ExitBadInput, filepath.Base(p), "reconstruct", p, arch, out("dir"))
	}

	// Checkpoint folders.
	idx := filepath.Join(dir, "missing-shard")
	writeST(t, filepath.Join(idx, "model-00001-of-00002.safetensors"), pairTensorsFT()[:2]...)
	require.NoError(t, os.WriteFile(filepath.Join(idx, "model.safetensors.index.json"), []byte(`{"metadata": {}, "weight_map": {
		"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
		"model.layers.0.norm.weight": "model-00001-of-00002.safetensors",
		"model.layers.0.self_attn.q_proj.weight": "model-00002-of-00002.safetensors"}}`), 0o644))
	add("index names a missing shard", ExitBadInput, "model-00002-of-00002.safetensors", "compress", base, idx, out("x.dcm"))
	badIdx := filepath.Join(dir, "bad-index")
	require.NoError(t, os.MkdirAll(badIdx, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(badIdx, "model.safetensors.index.json"), []byte(`{"weight_map": `), 0o644))
	add("index is invalid JSON", ExitBadInput, "model.safetensors.index.json", "compress", base, badIdx, out("x.dcm"))
	escape := filepath.Join(dir, "escaping-index")
	require.NoError(t, os.MkdirAll(escape, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(escape, "model.safetensors.index.json"),
		[]byte(`{"weight_map": {"w": "../base/model.safetensors"}}`), 0o644))
	add("index names a shard outside the folder", ExitBadInput, "../base/model.safetensors", "compress", base, escape, out("x.dcm"))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.MkdirAll(empty, 0o755))
	add("FT folder without a checkpoint", ExitBadInput, "empty", "compress", base, empty, out("x.dcm"))
	add("FT missing", ExitBadInput, "nope", "compress", base, filepath.Join(dir, "nope"), out("x.dcm"))
	add("FT is a JSON file", ExitBadInput, "config.json", "compress", base, filepath.Join(ft, "config.json"), out("x.dcm"))

	// BASE and FT that do not pair.
	b, f2 := pair("shape-proj", func(_, ft []stTensor) { ft[2].shape = []uint64{64, 48} })
	add("shape differs (projection)", ExitBadInput, "q_proj", "compress", b, f2, out("x.dcm"))
	b, f2 = pair("nan-ft", func(_, ft []stTensor) { ft[2].vals[7] = nan })
	add("NaN in FT projection", ExitBadInput, "q_proj", "compress", b, f2, out("x.dcm"))
	b, f2 = pair("inf-ft", func(_, ft []stTensor) { ft[2].vals[0] = -inf })
	add("-Inf in FT projection", ExitBadInput, "q_proj", "compress", b, f2, out("x.dcm"))
	b, f2 = pair("inf-base", func(base, _ []stTensor) { base[2].vals[9] = inf })
	add("Inf in BASE projection", ExitBadInput, "q_proj", "compress", b, f2, out("x.dcm"))
	b, f2 = pair("nan-base", func(base, _ []stTensor) { base[2].vals[9] = nan })
	add("NaN in BASE projection", ExitBadInput, "q_proj", "compress", b, f2, out("x.dcm"))

	// Accepted: stored bit-exact or computed in f32, documented.
	b, f2 = pair("nan-norm", func(_, ft []stTensor) { ft[1].vals[0] = nan })
	add("NaN in FT norm (stored bit-exact)", ExitOK, "", "compress", "-q", b, f2, out("ok1.dcm"))
	add("NaN in FT projection, --lossless", ExitOK, "", "compress", "-q", "--lossless", filepath.Join(dir, "nan-ft", "base"),
		filepath.Join(dir, "nan-ft", "ft"), out("ok2.dcm"))
	b, f2 = pair("dtype-norm", func(_, ft []stTensor) { ft[1].dt = safetensors.F32 })
	add("dtype differs (norm: stored full)", ExitOK, "", "compress", "-q", b, f2, out("ok3.dcm"))
	b, f2 = pair("dtype-proj", func(_, ft []stTensor) { ft[2].dt = safetensors.F16 })
	add("dtype differs (projection: delta in f32)", ExitOK, "", "compress", "-q", b, f2, out("ok4.dcm"))

	// Damaged archives.
	for _, n := range []int{0, 4, 8, 9, hlen / 2, hlen - 1, hlen, len(raw) - 1} {
		name := "cut-" + strconv.Itoa(n) + ".dcm"
		p := damaged(t, arch, name, func(raw []byte, _ *stfile.File) []byte { return raw[:n] })
		add("archive cut at "+strconv.Itoa(n), ExitBadInput, name, "reconstruct", base, p, out("dir"))
		add("inspect archive cut at "+strconv.Itoa(n), ExitBadInput, name, "inspect", p)
	}
	q := "model.layers.0.self_attn.q_proj.weight"
	for _, blob := range []string{q + "/u.codes", q + "/v.codes", q + "/u.scales", q + "/v.scales",
		"model.layers.0.norm.weight/xor", "score.bias/data", "__side__/config.json"} {
		name := "flip-" + strings.NewReplacer("/", "-", ".", "-").Replace(blob) + ".dcm"
		p := damaged(t, arch, name, flipBlob(blob))
		tensor, _, _ := strings.Cut(blob, "/")
		if tensor == "__side__" {
			tensor = "config.json"
		}
		add("flipped byte in "+blob, ExitBadInput, name+`: checksum mismatch: blob "`+blob+`"`, "reconstruct", base, p, out("dir"))
		cases[len(cases)-1].mention2 = `"` + tensor + `"`
	}
	p := damaged(t, arch, "flip-manifest.dcm", newManifest(func(js string) string {
		return strings.Replace(js, `"config.json"`, `"config.jsom"`, 1)
	}, false))
	add("manifest changed (side file renamed)", ExitBadInput, "manifest", "reconstruct", base, p, out("dir"))
	add("inspect manifest changed", ExitBadInput, "manifest", "inspect", p)
	p = damaged(t, arch, "flip-header.dcm", func(raw []byte, _ *stfile.File) []byte { raw[hlen/3] ^= 0x01; return raw })
	add("flipped byte in header", ExitBadInput, "flip-header.dcm", "reconstruct", base, p, out("dir"))
	p = damaged(t, arch, "future.dcm", newManifest(func(js string) string {
		return strings.Replace(js, `"version":1,`, `"version":2,`, 1)
	}, true))
	add("archive of version 2", ExitBadInput, "upgrade", "reconstruct", base, p, out("dir"))
	add("inspect archive of version 2", ExitBadInput, "version 2", "inspect", p)
	add("plain safetensors as archive", ExitBadInput, "deltacome.manifest", "inspect", filepath.Join(base, "model.safetensors"))
	add("archive missing", ExitBadInput, "nope.dcm", "reconstruct", base, filepath.Join(dir, "nope.dcm"), out("dir"))

	// Reconstruct onto the wrong base or into a used folder.
	add("wrong base", ExitBadInput, "sha256:", "reconstruct", ft, arch, out("dir"))
	add("OUTDIR not empty", ExitUsage, "not empty", "reconstruct", base, arch, ft)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tree(t, dir)
			var err error
			var code int
			require.NotPanics(t, func() { err, code = executeErr(t, tc.args...) })
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			t.Logf("| %s | %s | %d | %s |", tc.name, tc.args[0], code, msg)
			require.Equal(t, tc.want, code, "%v", err)
			if tc.want == ExitOK {
				return
			}
			assert.Contains(t, msg, tc.mention)
			assert.Contains(t, msg, tc.mention2)
			assert.Equal(t, before, tree(t, dir), "nothing left behind")
		})
	}
}

// pairTensorsFT returns the fine-tune tensors of the small pair.
func pairTensorsFT() []stTensor {
	_, ft := pairTensors(nil)
	return ft
}
