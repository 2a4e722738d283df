package lowrankbf16

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

// bf16Tol bounds the relative error that rounding the factors to bf16 (8
// significant bits, relative rounding error <= 2^-9 per entry) adds to an
// exactly representable low-rank delta: a few times 2^-9 ~ 0.002.
const bf16Tol = 0.01

// lowRankPlusNoise returns a rows x cols matrix of rank k plus Gaussian
// noise of the given relative size.
func lowRankPlusNoise(rng *rand.Rand, rows, cols, k int, noise float64) []float32 {
	a := make([]float32, rows*cols)
	for j := 0; j < k; j++ {
		u, v := make([]float64, rows), make([]float64, cols)
		for i := range u {
			u[i] = rng.NormFloat64()
		}
		for i := range v {
			v[i] = rng.NormFloat64()
		}
		w := math.Pow(0.7, float64(j)) // decaying spectrum
		for r := range rows {
			for c := range cols {
				a[r*cols+c] += float32(w * u[r] * v[c] * 1e-3)
			}
		}
	}
	for i := range a {
		a[i] += float32(noise * rng.NormFloat64() * 1e-3)
	}
	return a
}

func TestMaxRankAndCost(t *testing.T) {
	cases := []struct {
		rows, cols int
		budget     int64
		want       int
	}{
		{384, 384, 18432, 12},  // the tiny model's q_proj at ratio 16
		{1024, 384, 49152, 17}, // 49152 / 2816 = 17.45
		{128, 384, 6144, 6},    // 6144 / 1024
		{128, 384, 1023, 0},    // not one pair
		{4, 4, 1 << 20, 4},     // capped at min(rows, cols)
		{10, 3, 0, 0},          // no budget
	}
	for _, tc := range cases {
		got := MaxRank(tc.rows, tc.cols, tc.budget)
		assert.Equal(t, tc.want, got, "%dx%d budget %d", tc.rows, tc.cols, tc.budget)
		assert.LessOrEqual(t, Cost(tc.rows, tc.cols, got), max(tc.budget, 0))
		if got < min(tc.rows, tc.cols) {
			assert.Greater(t, Cost(tc.rows, tc.cols, got+1), tc.budget, "the rank is the largest that fits")
		}
	}
}

func TestEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	cases := []struct {
		name       string
		rows, cols int
		rank       int // of the signal
		noise      float64
		ratio      float64
	}{
		{"exact rank fits", 96, 64, 3, 0, 4},
		{"wide with noise", 48, 160, 8, 0.3, 8},
		{"tall with noise", 200, 40, 12, 0.5, 16},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			delta := lowRankPlusNoise(rng, tc.rows, tc.cols, tc.rank, tc.noise)
			e, err := Encode(delta, tc.rows, tc.cols, tc.ratio)
			require.NoError(t, err)
			rec := e.Record
			budget := svdquant.Budget(tc.rows, tc.cols, tc.ratio)
			assert.Equal(t, budget, rec.Budget)
			if tc.noise == 0 {
				// Exact keeps no numerically zero singular values.
				assert.Equal(t, min(tc.rank, MaxRank(tc.rows, tc.cols, budget)), rec.Rank)
			} else {
				assert.Equal(t, MaxRank(tc.rows, tc.cols, budget), rec.Rank)
			}
			stored := int64(len(e.U) + len(e.V))
			assert.Equal(t, Cost(tc.rows, tc.cols, rec.Rank), stored)
			assert.LessOrEqual(t, stored, budget)

			hat, err := Product(e.U, e.V, tc.rows, tc.cols, rec.Rank)
			require.NoError(t, err)
			var errSq, normSq float64
			for i, d := range delta {
				errSq += (float64(d) - float64(hat[i])) * (float64(d) - float64(hat[i]))
				normSq += float64(d) * float64(d)
			}
			assert.InDelta(t, math.Sqrt(normSq), rec.DeltaNorm, 1e-9)
			assert.InDelta(t, math.Sqrt(errSq/normSq), rec.RelError, 1e-9, "recorded error is that of Product")
			// Eckart-Young: no rank-r matrix beats the truncated SVD, whose
			// error is sqrt(1 - energy kept); bf16 factors add a little.
			optimal := math.Sqrt(max(1-rec.EnergyKept, 0))
			assert.GreaterOrEqual(t, rec.RelError, optimal-1e-4)
			assert.Less(t, rec.RelError, optimal+bf16Tol)
			if tc.noise == 0 && rec.Rank >= tc.rank {
				assert.Less(t, rec.RelError, bf16Tol, "an exactly low-rank delta is kept up to bf16 rounding")
			}
		})
	}
}

func TestEncodeEdgeCases(t *testing.T) {
	e, err := Encode(make([]float32, 12), 3, 4, 1)
	require.NoError(t, err)
	assert.Zero(t, e.Record.Rank)
	assert.Zero(t, e.Record.RelError, "nothing to lose")

	delta := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	e, err = Encode(delta, 3, 4, 100) // budget 0 bytes
	require.NoError(t, err)
	assert.Zero(t, e.Record.Rank)
	assert.Equal(t, 1.0, e.Record.RelError, "everything is lost")
	assert.Empty(t, e.U)
	assert.Empty(t, e.V)
}

func TestProductRejects(t *testing.T) {
	nan := dtype.BF16FromFloat32(float32(math.NaN()))
	good := make([]byte, 2*3*1)
	cases := []struct {
		name string
		u, v []byte
		rank int
	}{
		{"rank too large", make([]byte, 2*3*5), make([]byte, 2*5*4), 5},
		{"negative rank", nil, nil, -1},
		{"short u", make([]byte, 4), make([]byte, 8), 1},
		{"long v", good, make([]byte, 10), 1},
		{"NaN factor", []byte{0, 0, 0, 0, byte(nan), byte(nan >> 8)}, make([]byte, 8), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Product(tc.u, tc.v, 3, 4, tc.rank)
			assert.ErrorIs(t, err, archive.ErrFormat)
		})
	}
}

func TestApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	const rows, cols = 40, 24
	delta := lowRankPlusNoise(rng, rows, cols, 4, 0.2)
	base := make([]float32, rows*cols)
	for i := range base {
		base[i] = float32(rng.NormFloat64() * 0.02)
	}
	e, err := Encode(delta, rows, cols, 4)
	require.NoError(t, err)
	hat, err := Product(e.U, e.V, rows, cols, e.Record.Rank)
	require.NoError(t, err)
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F32} {
		bb := make([]byte, rows*cols*int(dt.Size()))
		require.NoError(t, dtype.Encode(bb, base, dt))
		got := make([]byte, len(bb))
		require.NoError(t, Apply(got, dt, bb, dt, rows, cols, &e.Record, e.U, e.V))
		w := make([]float32, rows*cols)
		require.NoError(t, dtype.Decode(w, bb, dt))
		for i := range w {
			w[i] += hat[i]
		}
		want := make([]byte, len(bb))
		require.NoError(t, dtype.Encode(want, w, dt))
		assert.Equal(t, want, got, dt.String())
	}
	assert.ErrorIs(t, Apply(nil, safetensors.BF16, nil, safetensors.BF16, rows, cols, nil, e.U, e.V), archive.ErrFormat)
}
