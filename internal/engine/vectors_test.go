package engine

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/archive"
)

var update = flag.Bool("update", false, "rewrite the test vectors in testdata/vectors")

// vectorsDir holds the format's test vectors (docs/FORMAT.md section 6): a
// base checkpoint, one archive per method and the SHA-256 of every tensor
// reconstructed from each.
var vectorsDir = filepath.Join("..", "..", "testdata", "vectors")

// vectorArchives are the archives of the test vectors and the methods that
// made them.
var vectorArchives = []struct{ file, method, grid string }{
	{"deltacome.dcm", MethodDeltaCoMe, GridAsym},
	{"bitdelta.dcm", MethodBitDelta, ""},
	{"lowrank.dcm", MethodLowRank, ""},
	{"deltacome-sym.dcm", MethodDeltaCoMe, GridSym},
}

// vectorPair writes the base and fine-tune of the test vectors: a tensor
// of each bit-exact kind, projections of two shapes (one in F32, where no
// rounding to a narrower dtype hides the order of the float32 operations,
// one fine-tuned in F16 over a BF16 base) and one too small for any
// singular pair at ratio 8, whose base holds a -0.
func vectorPair(t *testing.T) (base, ft string) {
	rng := rand.New(rand.NewPCG(11, 11))
	normal := func(n int, scale float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * scale)
		}
		return x
	}
	tuned := func(w []float32) []float32 {
		out := slices.Clone(w)
		for i, d := range normal(len(w), 0.004) {
			out[i] += d
		}
		return out
	}
	emb, norm := normal(10*32, 0.02), normal(32, 1)
	q, v, o := normal(32*32, 0.02), normal(16*32, 0.02), normal(4*8, 0.02)
	o[0] = float32(math.Copysign(0, -1))
	fnorm := slices.Clone(norm)
	fnorm[3] += 0.25
	base = folder(t, map[string]tensorSpec{
		"model.embed_tokens.weight":              {safetensors.BF16, []uint64{10, 32}, emb},
		"model.layers.0.input_layernorm.weight":  {safetensors.BF16, []uint64{32}, norm},
		"model.layers.0.self_attn.q_proj.weight": {safetensors.F32, []uint64{32, 32}, q},
		"model.layers.0.self_attn.v_proj.weight": {safetensors.BF16, []uint64{16, 32}, v},
		"model.layers.0.self_attn.o_proj.weight": {safetensors.BF16, []uint64{4, 8}, o},
	}, nil)
	ft = folder(t, map[string]tensorSpec{
		"model.embed_tokens.weight":              {safetensors.BF16, []uint64{10, 32}, emb},
		"model.layers.0.input_layernorm.weight":  {safetensors.BF16, []uint64{32}, fnorm},
		"model.layers.0.self_attn.q_proj.weight": {safetensors.F32, []uint64{32, 32}, tuned(q)},
		"model.layers.0.self_attn.v_proj.weight": {safetensors.F16, []uint64{16, 32}, tuned(v)},
		"model.layers.0.self_attn.o_proj.weight": {safetensors.BF16, []uint64{4, 8}, tuned(o)},
		"score.bias":                             {safetensors.F32, []uint64{2}, []float32{0.5, -2}},
	}, map[string]string{"config.json": `{"model_type": "llama"}`})
	return base, ft
}

// TestVectors reconstructs each test-vector archive against the
// test-vector base and checks the SHA-256 of every tensor against
// testdata/vectors/sha256.json. With -update it makes the vectors anew.
//
// The OpenBLAS build sums the Delta-CoMe product in the BLAS's own order
// (docs/FORMAT.md section 2.7), so it checks the lowrank tensors only
// against a bound there.
func TestVectors(t *testing.T) {
	ctx := context.Background()
	baseDir := filepath.Join(vectorsDir, "base")
	sumsPath := filepath.Join(vectorsDir, "sha256.json")
	if *update {
		base, ft := vectorPair(t)
		require.NoError(t, os.RemoveAll(vectorsDir))
		require.NoError(t, os.MkdirAll(baseDir, 0o755))
		raw, err := os.ReadFile(filepath.Join(base, "model.safetensors"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(baseDir, "model.safetensors"), raw, 0o644))
		for _, a := range vectorArchives {
			opt := deltaOpts(t, 8, "auto")
			opt.Method, opt.GroupSize, opt.Tool, opt.Grid = a.method, 12, "deltacome test vectors", a.grid
			if a.grid == GridSym { // a scale per vector, and a refit round to pin its decoding
				opt.GroupSize, opt.Refit = 0, 1
			}
			_, err := Compress(ctx, base, ft, filepath.Join(vectorsDir, a.file), opt)
			require.NoError(t, err)
		}
	}
	want := map[string]map[string]string{}
	got := map[string]map[string]string{}
	for _, a := range vectorArchives {
		out := filepath.Join(t.TempDir(), "out")
		_, err := Reconstruct(ctx, baseDir, filepath.Join(vectorsDir, a.file), out, ReconstructOptions{})
		require.NoError(t, err, a.file)
		got[a.file] = map[string]string{}
		for name, data := range tensors(t, out) {
			sum := sha256.Sum256(data)
			got[a.file][name] = hex.EncodeToString(sum[:])
		}
	}
	if *update {
		js, err := json.MarshalIndent(got, "", "  ")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(sumsPath, append(js, '\n'), 0o644))
	}
	js, err := os.ReadFile(sumsPath)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(js, &want))
	kinds := map[string]bool{}
	for _, a := range vectorArchives {
		rep, err := Inspect(filepath.Join(vectorsDir, a.file))
		require.NoError(t, err)
		require.Len(t, got[a.file], len(want[a.file]), a.file)
		for _, rec := range rep.Manifest.Tensors {
			kinds[rec.Kind] = true
			if (rec.Kind == archive.KindLowRank || rec.Kind == archive.KindLowRankSym) && linalg.Backend != pureGoBackend {
				continue // another summation order: checked by the round-trip tests
			}
			assert.Equal(t, want[a.file][rec.Name], got[a.file][rec.Name], "%s: %s (%s)", a.file, rec.Name, rec.Kind)
		}
	}
	assert.Len(t, kinds, 7, "the vectors hold every storage kind: %v", kinds)
}

// pureGoBackend is linalg.Backend in the build whose Delta-CoMe product
// follows the reference order of docs/FORMAT.md.
const pureGoBackend = "pure-Go gonum"

// TestVectorsFollowTheSpec decodes every lossy tensor of the test vectors
// as docs/FORMAT.md sections 2.7-2.9 state it, with scalar float32
// arithmetic in the order the spec gives and no BLAS, and requires the
// bytes Reconstruct writes to be the same: the spec pins the arithmetic.
func TestVectorsFollowTheSpec(t *testing.T) {
	ctx := context.Background()
	baseDir := filepath.Join(vectorsDir, "base")
	base := tensors(t, baseDir)
	baseDT := map[string]safetensors.DType{}
	rep, err := Inspect(filepath.Join(vectorsDir, vectorArchives[0].file))
	require.NoError(t, err)
	for _, bt := range rep.Manifest.Base.Tensors {
		baseDT[bt.Name], err = safetensors.ParseDType(bt.DType)
		require.NoError(t, err)
	}
	for _, a := range vectorArchives {
		path := filepath.Join(vectorsDir, a.file)
		out := filepath.Join(t.TempDir(), "out")
		_, err := Reconstruct(ctx, baseDir, path, out, ReconstructOptions{})
		require.NoError(t, err)
		got := tensors(t, out)
		ar, err := archive.Open(path)
		require.NoError(t, err)
		for _, rec := range ar.Manifest.Tensors {
			blob := func(role string) []byte {
				b, ok := rec.Blob(role)
				require.True(t, ok, role)
				data, err := ar.Blob(b)
				require.NoError(t, err)
				return data
			}
			rows, cols := int(rec.Shape[0]), 0
			if len(rec.Shape) == 2 {
				cols = int(rec.Shape[1])
			}
			w := make([]float32, rows*cols)
			var hat func(i, k int, w float32) float32
			switch rec.Kind {
			case archive.KindLowRank:
				if linalg.Backend != pureGoBackend {
					continue
				}
				hat = specLowRank(blob, rec.LowRank, rows, cols)
			case archive.KindLowRankSym:
				if linalg.Backend != pureGoBackend {
					continue
				}
				hat = specLowRankSym(blob, rec.LowRankSym, rows, cols)
			case archive.KindBitDelta:
				hat = specBitDelta(blob, cols)
			case archive.KindLowRankBF16:
				hat = specLowRankBF16(blob, rec.LowRankBF16.Rank, rows, cols)
			default:
				continue
			}
			require.NoError(t, dtype.Decode(w, base[rec.Name], baseDT[rec.Name]))
			for i := range rows {
				for k := range cols {
					w[i*cols+k] = hat(i, k, w[i*cols+k])
				}
			}
			dt, err := safetensors.ParseDType(rec.DType)
			require.NoError(t, err)
			want := make([]byte, rec.Bytes)
			require.NoError(t, dtype.Encode(want, w, dt))
			assert.Equal(t, want, got[rec.Name], "%s: %s (%s)", a.file, rec.Name, rec.Kind)
		}
		require.NoError(t, ar.Close())
	}
}

// specLowRank returns element (i, k) of W given W_base's as the spec's
// section 2.7 computes it: the rank-1 terms added to the base one by one.
func specLowRank(blob func(string) []byte, lr *archive.LowRank, rows, cols int) func(i, k int, w float32) float32 {
	r, g := lr.Rank, lr.GroupSize
	var widths []int
	for _, b := range lr.Bands {
		for range b.Count {
			widths = append(widths, b.Bits)
		}
	}
	sigma := blob(archive.RoleSigma)
	// vector returns element e of vector j (n elements) of a code stream and
	// its qparams: min + code x scale, the product rounded first.
	vector := func(codes, qp []byte, n, j, e int) float32 {
		code := specCode(codes, widths, n, j, e)
		q := (j*((n+g-1)/g) + e/g) * 4
		scale := dtype.Float32FromBF16(binary.LittleEndian.Uint16(qp[q:]))
		mn := dtype.Float32FromBF16(binary.LittleEndian.Uint16(qp[q+2:]))
		return mn + float32(float32(code)*scale)
	}
	uc, uq, vc, vq := blob(archive.RoleUCodes), blob(archive.RoleUQParams), blob(archive.RoleVCodes), blob(archive.RoleVQParams)
	return func(i, k int, w float32) float32 {
		for j := range r {
			s := math.Float32frombits(binary.LittleEndian.Uint32(sigma[4*j:]))
			u := float32(vector(uc, uq, rows, j, i) * s)
			if u != 0 {
				w += float32(u * vector(vc, vq, cols, j, k))
			}
		}
		return w
	}
}

// specCode returns the code of element e of vector j (n elements) of a
// code stream whose vectors have the given widths, read bit by bit as
// section 2.7 states the stream.
func specCode(codes []byte, widths []int, n, j, e int) uint32 {
	pos := 0
	for _, b := range widths[:j] {
		pos += n * b
	}
	pos += e * widths[j]
	var code uint32
	for bit := range widths[j] {
		p := pos + bit
		code |= uint32(codes[p/8]>>(p%8)&1) << bit
	}
	return code
}

// specLowRankSym returns element (i, k) of W given W_base's as the spec's
// section 2.10 computes it: as section 2.7, with u and v on symmetric grids
// and u carrying the singular value.
func specLowRankSym(blob func(string) []byte, lr *archive.LowRankSym, rows, cols int) func(i, k int, w float32) float32 {
	r, g := lr.Rank, lr.GroupSize
	var widths []int
	for _, b := range lr.Bands {
		for range b.Count {
			widths = append(widths, b.Bits)
		}
	}
	// vector returns element e of vector j (n elements): (2 code - maxQ) x
	// scale, the scale of its group.
	vector := func(codes, scales []byte, n, j, e int) float32 {
		code := specCode(codes, widths, n, j, e)
		groups, group := 1, 0
		if g > 0 {
			groups, group = (n+g-1)/g, e/g
		}
		scale := dtype.Float32FromBF16(binary.LittleEndian.Uint16(scales[2*(j*groups+group):]))
		return float32(2*int(code)-(1<<widths[j]-1)) * scale
	}
	uc, us, vc, vs := blob(archive.RoleUCodes), blob(archive.RoleUScales), blob(archive.RoleVCodes), blob(archive.RoleVScales)
	return func(i, k int, w float32) float32 {
		for j := range r {
			if u := vector(uc, us, rows, j, i); u != 0 {
				w += float32(u * vector(vc, vs, cols, j, k))
			}
		}
		return w
	}
}

// specBitDelta returns element (i, k) of W given W_base's as the spec's
// section 2.8 computes it.
func specBitDelta(blob func(string) []byte, cols int) func(i, k int, w float32) float32 {
	signs := blob(archive.RoleSigns)
	scale := math.Float32frombits(binary.LittleEndian.Uint32(blob(archive.RoleScale)))
	return func(i, k int, w float32) float32 {
		e := i*cols + k
		if signs[e/8]>>(e%8)&1 == 1 {
			return w + scale
		}
		return w - scale
	}
}

// specLowRankBF16 returns element (i, k) of W given W_base's as the spec's
// section 2.9 computes it: the product B A first, from +0, then the base
// added.
func specLowRankBF16(blob func(string) []byte, r, rows, cols int) func(i, k int, w float32) float32 {
	u, v := blob(archive.RoleU), blob(archive.RoleV)
	bf := func(b []byte, idx int) float32 { return dtype.Float32FromBF16(binary.LittleEndian.Uint16(b[2*idx:])) }
	return func(i, k int, w float32) float32 {
		if r == 0 {
			return w
		}
		var h float32
		for j := range r {
			if b := bf(u, i*r+j); b != 0 {
				h += float32(b * bf(v, j*cols+k))
			}
		}
		return w + h
	}
}
