package storage

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// TestKindsMatchArchive checks that the codec table and pkg/archive's
// validation table list the same kinds, that each lossy kind has the hooks
// the engine calls on lossy kinds, and that every method maps to one.
func TestKindsMatchArchive(t *testing.T) {
	assert.Equal(t, archive.Kinds(), Names())
	for _, name := range Names() {
		k, ok := Lookup(name)
		require.True(t, ok, name)
		assert.Equal(t, name != archive.KindFull, k.Base, "%s: stored against the base", name)
		for hook, set := range map[string]bool{"Encode": k.Encode != nil, "Decode": k.Decode != nil, "Memory": k.Memory != nil, "Report": k.Report != nil} {
			assert.True(t, set, "%s: %s", name, hook)
		}
		lossy := archive.KindLossy(name)
		for hook, set := range map[string]bool{"Cost": k.Cost != nil, "Estimate": k.Estimate != nil, "Settings": k.Settings != nil} {
			assert.Equal(t, lossy, set, "%s: %s", name, hook)
		}
	}
	for _, method := range []string{"", "deltacome", "bitdelta", "lowrank"} {
		k, ok := ForMethod(method, "")
		require.True(t, ok, method)
		assert.True(t, archive.KindLossy(k.Name), method)
	}
	for grid, want := range map[string]string{"": archive.KindLowRank, "asym": archive.KindLowRank, "sym": archive.KindLowRankSym} {
		k, ok := ForMethod("deltacome", grid)
		require.True(t, ok, grid)
		assert.Equal(t, want, k.Name, grid)
	}
	_, ok := ForMethod("sparse", "")
	assert.False(t, ok)
	_, ok = ForMethod("bitdelta", "sym")
	assert.False(t, ok, "a grid applies to method deltacome only")
	_, ok = Lookup("sparse")
	assert.False(t, ok)
}

// TestRoundTrip encodes a small projection as every kind and decodes it
// back: the bit-exact kinds give the fine-tune's bytes, the lossy ones a
// tensor within their recorded error of it, and every kind writes the
// blobs of its roles.
func TestRoundTrip(t *testing.T) {
	const rows, cols = 24, 16
	rng := rand.New(rand.NewPCG(3, 3))
	base, ft := make([]float32, rows*cols), make([]float32, rows*cols)
	for i := range base {
		base[i] = float32(rng.NormFloat64() * 0.02)
		ft[i] = base[i] + float32(rng.NormFloat64()*0.004)
	}
	bdata, data := make([]byte, 4*len(base)), make([]byte, 4*len(ft))
	require.NoError(t, dtype.Encode(bdata, base, safetensors.F32))
	require.NoError(t, dtype.Encode(data, ft, safetensors.F32))
	delta := make([]float32, rows*cols)
	require.NoError(t, svdquant.Delta(delta, data, safetensors.F32, bdata, safetensors.F32))

	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			k, _ := Lookup(name)
			rec := &archive.Tensor{Name: "w", DType: "F32", Shape: []uint64{rows, cols}, Kind: name, Bytes: int64(len(data))}
			in := &Input{Data: data, Base: bdata, ElemSize: 4, Delta: delta, Rows: rows, Cols: cols,
				Options: svdquant.Options{Ratio: 4, GroupSize: 8}}
			if name == archive.KindSame {
				in.Data = bdata
			}
			blobs, err := k.Encode(rec, in)
			require.NoError(t, err)
			roles := archive.KindRoles(name)
			require.Len(t, blobs, len(roles))
			raw := make([][]byte, len(blobs))
			for i, b := range blobs {
				assert.Equal(t, roles[i], b.Role)
				raw[i] = b.Raw
			}
			din := &DecodeInput{Rec: rec, Blobs: raw, Alloc: func(n int64) []byte { return make([]byte, n) }}
			if k.Base {
				din.Base, din.BaseDType = bdata, safetensors.F32
			}
			out, err := k.Decode(din)
			require.NoError(t, err)
			rel, norm, lossy := rec.DeltaError()
			if !lossy {
				assert.Equal(t, in.Data, out)
				return
			}
			got := make([]float32, rows*cols)
			require.NoError(t, dtype.Decode(got, out, safetensors.F32))
			var errSq float64
			for i := range got {
				d := float64(got[i]) - float64(ft[i])
				errSq += d * d
			}
			// float32 rounding of the sum to the base, far below the
			// recorded error of any of these lossy kinds.
			const roundingSlack = 1e-3
			assert.InDelta(t, rel*norm, math.Sqrt(errSq), roundingSlack*norm)
			assert.Positive(t, k.Memory(rec))
		})
	}
}
