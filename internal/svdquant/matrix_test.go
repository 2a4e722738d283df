package svdquant

import (
	"math/rand/v2"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
)

// TestEncodeFromCheckpointRows checks that both grids give the same bits
// for a delta read from bf16 checkpoint bytes through NewDeltaRows as for
// the same delta computed whole by Delta.
func TestEncodeFromCheckpointRows(t *testing.T) {
	const rows, cols = 96, 160
	rng := rand.New(rand.NewPCG(7, 11))
	base, ft := make([]float32, rows*cols), testDelta(rng, rows, cols, 24)
	for i := range base {
		base[i] = float32(rng.NormFloat64())
		ft[i] += base[i]
	}
	bb, fb := make([]byte, 2*rows*cols), make([]byte, 2*rows*cols)
	require.NoError(t, dtype.Encode(bb, base, safetensors.BF16))
	require.NoError(t, dtype.Encode(fb, ft, safetensors.BF16))
	whole := make([]float32, rows*cols)
	require.NoError(t, Delta(whole, fb, safetensors.BF16, bb, safetensors.BF16))
	auto, err := alloc.ParseSchedule("auto")
	require.NoError(t, err)

	src := func() linalg.Matrix {
		d, err := NewDeltaRows(fb, safetensors.BF16, bb, safetensors.BF16, rows, cols, nil)
		require.NoError(t, err)
		return d
	}
	opt := Options{Ratio: 8, Schedule: auto, GroupSize: 32}
	want, err := Encode(whole, rows, cols, opt)
	require.NoError(t, err)
	got, err := EncodeMatrix(src(), opt)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	opt = Options{Ratio: 8, Schedule: auto, Refit: 1}
	wantSym, err := EncodeSym(whole, rows, cols, opt)
	require.NoError(t, err)
	gotSym, err := EncodeSymMatrix(src(), opt)
	require.NoError(t, err)
	assert.Equal(t, wantSym, gotSym)
	assert.Positive(t, gotSym.Record.Rank)
}
