package cli

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// rawTensor is a tensor as its bytes, for rewriting checkpoints.
type rawTensor struct {
	name  string
	dt    safetensors.DType
	shape []uint64
	data  []byte
}

// readRaw returns the tensors of the safetensors file at path, in file
// order.
func readRaw(t *testing.T, path string) []rawTensor {
	t.Helper()
	f, err := stfile.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []rawTensor
	for _, name := range f.Names() {
		info, _ := f.Info(name)
		data, err := f.Data(name)
		require.NoError(t, err)
		out = append(out, rawTensor{name: name, dt: info.DType, shape: info.Shape, data: bytes.Clone(data)})
	}
	return out
}

// writeRaw writes ts, in order, as the safetensors file path.
func writeRaw(t *testing.T, path string, ts []rawTensor) {
	t.Helper()
	var infos []stfile.Info
	var data []byte
	for _, r := range ts {
		infos = append(infos, stfile.Info{Name: r.name, DType: r.dt, Shape: r.shape})
		data = append(data, r.data...)
	}
	h, err := stfile.EncodeHeader(infos, nil)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, stfile.WriteHeader(&buf, h))
	buf.Write(data)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
}

// rewriteTiny writes the bundled pair, each tensor passed through edit, as
// the folders base and ft under dir (ft with the pair's config.json).
func rewriteTiny(t *testing.T, dir string, edit func(ft bool, r rawTensor) []rawTensor) (base, ft string) {
	t.Helper()
	base, ft = filepath.Join(dir, "base"), filepath.Join(dir, "ft")
	for _, side := range []struct {
		src, dst string
		ft       bool
	}{{tinyBase, base, false}, {tinyFT, ft, true}} {
		var out []rawTensor
		for _, r := range readRaw(t, filepath.Join(side.src, "model.safetensors")) {
			out = append(out, edit(side.ft, r)...)
		}
		writeRaw(t, filepath.Join(side.dst, "model.safetensors"), out)
	}
	cfg, err := os.ReadFile(filepath.Join(tinyFT, "config.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(ft, "config.json"), cfg, 0o644))
	return base, ft
}

// mixtralNames maps the tiny pair's MLP projections to the names of
// Mixtral's experts.
var mixtralNames = map[string]string{"mlp.gate_proj": "w1", "mlp.up_proj": "w3", "mlp.down_proj": "w2"}

// TestMoEPairCompresses renames the tiny pair's MLP into two Mixtral-style
// experts with a router: with no --include, every block matrix (attention
// and experts) is stored lossily, and the embeddings, lm_head, norms and
// the router bit-exact; each expert matrix reports its role.
func TestMoEPairCompresses(t *testing.T) {
	dir := t.TempDir()
	base, ft := rewriteTiny(t, dir, func(isFT bool, r rawTensor) []rawTensor {
		for from, to := range mixtralNames {
			if !strings.Contains(r.name, from) {
				continue
			}
			var out []rawTensor
			for _, e := range []string{"0", "1"} {
				c := r
				c.name = strings.Replace(r.name, from, "block_sparse_moe.experts."+e+"."+to, 1)
				out = append(out, c)
			}
			if from == "mlp.gate_proj" { // one router per layer: 2 experts x hidden
				g := rawTensor{name: strings.Replace(r.name, from, "block_sparse_moe.gate", 1), dt: r.dt,
					shape: []uint64{2, r.shape[1]}, data: bytes.Clone(r.data[:2*r.shape[1]*2])}
				if isFT {
					g.data[1] ^= 1 // a changed router must stay exact
				}
				out = append(out, g)
			}
			return out
		}
		return []rawTensor{r}
	})
	arch := filepath.Join(dir, "moe.dcm")
	_, stderr, code := execute(t, "compress", "-q", "--workers", "2", base, ft, arch)
	require.Equal(t, ExitOK, code, stderr)

	ar, err := archive.Open(arch)
	require.NoError(t, err)
	defer ar.Close()
	lossy, roles := 0, map[string]int{}
	for _, rec := range ar.Manifest.Tensors {
		inBlock := engine.Layer(rec.Name) >= 0 && len(rec.Shape) == 2
		isRouter := strings.HasSuffix(rec.Name, "block_sparse_moe.gate.weight")
		if inBlock && !isRouter {
			assert.Equal(t, archive.KindLowRankSym, rec.Kind, rec.Name)
			lossy++
			roles[engine.Role(rec.Name)]++
		} else {
			assert.Contains(t, []string{archive.KindSame, archive.KindXOR}, rec.Kind, rec.Name)
		}
	}
	assert.Equal(t, 4*(4+2*3), lossy, "4 layers of q, k, v, o and 2 experts of 3 matrices")
	assert.Equal(t, map[string]int{"q": 4, "k": 4, "v": 4, "o": 4, "gate": 8, "up": 8, "down": 8}, roles)
}

// addedTokens is the number of vocabulary rows the resized fine-tune adds,
// as a chat template's special tokens do.
const addedTokens = 8

// TestAddedTokensPair grows the tiny fine-tune's embed_tokens and lm_head
// by addedTokens rows: compress warns and stores both whole, --dry-run says
// the same, and reconstruct gives them back bit-exact.
func TestAddedTokensPair(t *testing.T) {
	dir := t.TempDir()
	resized := []string{"model.embed_tokens.weight", "lm_head.weight"}
	base, ft := rewriteTiny(t, dir, func(isFT bool, r rawTensor) []rawTensor {
		if isFT && slices.Contains(resized, r.name) {
			rowBytes := len(r.data) / int(r.shape[0])
			extra := bytes.Clone(r.data[:addedTokens*rowBytes]) // new rows: the first ones, perturbed
			for i := 0; i < len(extra); i += 2 {
				extra[i] ^= 0x5a // the low mantissa byte of each bf16 value
			}
			r.shape = []uint64{r.shape[0] + addedTokens, r.shape[1]}
			r.data = append(bytes.Clone(r.data), extra...)
		}
		return []rawTensor{r}
	})
	arch := filepath.Join(dir, "a.dcm")
	stdout, stderr, code := execute(t, "compress", "--json", "--workers", "2", base, ft, arch)
	require.Equal(t, ExitOK, code, stderr)
	var sum compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	assert.Equal(t, 28, sum.Lossy, "the projections are compressed as before")
	var warned []string
	for _, w := range sum.Warnings {
		if w.Code == engine.WarnShapeChanged {
			warned = append(warned, w.Subject)
			assert.Contains(t, w.Message, "[272 384] in the fine-tune and [264 384] in the base")
		}
	}
	assert.ElementsMatch(t, resized, warned)

	stdout, stderr, code = execute(t, "compress", "--dry-run", "--json", base, ft)
	require.Equal(t, ExitOK, code, stderr)
	var plan planJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	assert.Equal(t, sum.Warnings, plan.Warnings, "the plan warns as compress does")
	for _, tn := range plan.Tensors {
		if slices.Contains(resized, tn.Name) {
			assert.Equal(t, archive.KindFull, tn.Kind, tn.Name)
		}
	}
	stdout, _, code = execute(t, "compress", "-n", base, ft)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, `warning: tensor "lm_head.weight" has shape [272 384]`)

	out := filepath.Join(dir, "out")
	_, stderr, code = execute(t, "reconstruct", "-q", base, arch, out)
	require.Equal(t, ExitOK, code, stderr)
	want := readRaw(t, filepath.Join(ft, "model.safetensors"))
	got := readRaw(t, filepath.Join(out, "model.safetensors"))
	require.Len(t, got, len(want))
	for i, w := range want {
		if slices.Contains(resized, w.name) {
			assert.Equal(t, w, got[i], "bit-exact: %s", w.name)
		}
	}
	_, stderr, code = execute(t, "verify", "-q", base, ft, arch)
	assert.Equal(t, ExitOK, code, stderr)
	_, stderr, code = execute(t, "inspect", arch)
	assert.Equal(t, ExitOK, code, stderr)

	// Selected on purpose, a resized tensor cannot be a delta: the error
	// says how to store it whole.
	err, code := executeErr(t, "compress", "--include", "embed_tokens", base, ft, filepath.Join(dir, "x.dcm"))
	assert.Equal(t, ExitBadInput, code)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `--exclude '^model\.embed_tokens\.weight$'`)
}

// TestFolderComesBackWhole gives the fine-tune folder a model card, a
// licence, dotfiles, a tokenizer, a PyTorch copy of the weights and a
// subfolder: the files come back byte-identical, the weights in another
// format and the subfolder are listed as not carried, with the reason, by
// compress and by --dry-run.
func TestFolderComesBackWhole(t *testing.T) {
	dir := t.TempDir()
	base, ft := rewriteTiny(t, dir, func(_ bool, r rawTensor) []rawTensor { return []rawTensor{r} })
	carried := map[string]string{
		"README.md":             "---\nlicense: apache-2.0\n---\n# tiny math\n",
		"LICENSE":               "Apache License\nVersion 2.0\n",
		".gitattributes":        "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
		".hidden":               "\x00\x01binary\xff",
		"tokenizer_config.json": `{"chat_template": "{{ messages }}"}`,
		"notes":                 "no extension at all",
	}
	for name, body := range carried {
		require.NoError(t, os.WriteFile(filepath.Join(ft, name), []byte(body), 0o600))
	}
	require.NoError(t, os.WriteFile(filepath.Join(ft, "pytorch_model.bin"), []byte("pickled weights"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(ft, "original"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(ft, "original", "params.json"), []byte("{}"), 0o644))
	skipped := map[string]string{"original": "a subfolder", "pytorch_model.bin": "another format: .bin"}

	arch := filepath.Join(dir, "a.dcm")
	stdout, stderr, code := execute(t, "compress", "--json", "--lossless", base, ft, arch)
	require.Equal(t, ExitOK, code, stderr)
	var sum compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	warned := map[string]string{}
	for _, w := range sum.Warnings {
		if w.Code == engine.WarnSkippedFile {
			warned[w.Subject] = w.Message
		}
	}
	require.Len(t, warned, len(skipped))
	for name, reason := range skipped {
		assert.Contains(t, warned[name], reason, name)
	}
	_, stderr, code = execute(t, "compress", "--lossless", base, ft, filepath.Join(dir, "b.dcm"))
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stderr, `"pytorch_model.bin" in the fine-tune folder is not carried`, "warned on stderr")

	stdout, stderr, code = execute(t, "compress", "--dry-run", "--json", base, ft)
	require.Equal(t, ExitOK, code, stderr)
	var plan planJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &plan))
	assert.Equal(t, len(carried)+1, plan.SideFiles, "and config.json")
	require.Len(t, plan.SkippedFiles, len(skipped))
	for _, f := range plan.SkippedFiles {
		assert.Contains(t, f.Reason, skipped[f.Name], f.Name)
	}
	stdout, _, code = execute(t, "compress", "-n", base, ft)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "not carried: original (a subfolder: only the files directly in the folder are carried)")
	assert.Contains(t, stdout, "not carried: pytorch_model.bin (weights in another format: .bin)")

	out := filepath.Join(dir, "out")
	_, stderr, code = execute(t, "reconstruct", "-q", base, arch, out)
	require.Equal(t, ExitOK, code, stderr)
	carried["config.json"] = ""
	for name := range carried {
		want, err := os.ReadFile(filepath.Join(ft, name))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(out, name))
		require.NoError(t, err, name)
		assert.Equal(t, want, got, name)
	}
	for name := range skipped {
		_, err := os.Lstat(filepath.Join(out, name))
		assert.ErrorIs(t, err, fs.ErrNotExist, name)
	}
	_, stderr, code = execute(t, "verify", "-q", base, ft, arch)
	assert.Equal(t, ExitOK, code, stderr)
}
