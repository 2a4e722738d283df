package svdquant

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/nlpodyssey/safetensors"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
)

// testDelta returns a row-major rows x cols delta shaped like a fine-tuning
// delta: rank-r structure with singular values (1 + j/8)^-0.5 holding 70% of
// the energy, plus full-rank Gaussian noise holding 30%.
func testDelta(rng *rand.Rand, rows, cols, r int) []float32 {
	r = min(r, rows, cols)
	x := make([]float32, rows*r)
	y := make([]float32, r*cols)
	var sig float64
	for j := range r {
		d := math.Pow(1+float64(j)/8, -0.5)
		sig += d * d
		for i := range rows {
			x[i*r+j] = float32(d * rng.NormFloat64() / math.Sqrt(float64(rows)))
		}
	}
	for i := range y {
		y[i] = float32(rng.NormFloat64() / math.Sqrt(float64(cols)))
	}
	out := make([]float32, rows*cols)
	linalg.Mul(out, x, y, rows, r, cols)
	a := math.Sqrt(0.7 / sig)
	b := math.Sqrt(0.3 / float64(rows*cols))
	for i := range out {
		out[i] = float32(a*float64(out[i]) + b*rng.NormFloat64())
	}
	return out
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		rows, cols int
		svd        linalg.Route
	}{
		{96, 160, linalg.RouteExact},
		{160, 96, linalg.RouteExact},
		{256, 512, linalg.RouteRandomized},
		{512, 256, linalg.RouteRandomized},
	} {
		t.Run(fmt.Sprintf("%dx%d_%v", tc.rows, tc.cols, tc.svd), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.cols)))
			delta := testDelta(rng, tc.rows, tc.cols, 32)
			enc, err := Encode(delta, tc.rows, tc.cols, Options{Ratio: 16, GroupSize: 64, SVD: tc.svd})
			require.NoError(t, err)
			budget := Budget(tc.rows, tc.cols, 16)
			stored := len(enc.Sigma) + len(enc.UCodes) + len(enc.VCodes) + len(enc.UQParams) + len(enc.VQParams)
			assert.LessOrEqual(t, int64(stored), budget)
			hat, err := enc.Product(tc.rows, tc.cols, &enc.Record)
			require.NoError(t, err)
			var errSq, normSq float64
			for i, d := range delta {
				e := float64(d - hat[i])
				errSq += e * e
				normSq += float64(d) * float64(d)
			}
			// The recorded error is measured the same way, block by block.
			assert.InDelta(t, math.Sqrt(errSq/normSq), enc.Record.RelError, 1e-6)
			assert.Less(t, enc.Record.RelError, 0.9, "a ratio-16 plan keeps most of the structured part")
		})
	}
}

func TestEncodeWorkersIdentical(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const rows, cols = 300, 700 // enough pairs for sampled measurement
	delta := testDelta(rng, rows, cols, 64)
	var first *Encoded
	for _, w := range []int{1, 2, 3} {
		enc, err := Encode(delta, rows, cols, Options{Ratio: 4, GroupSize: 128, SVD: linalg.RouteExact, Workers: w})
		require.NoError(t, err)
		if first == nil {
			first = enc
			continue
		}
		assert.Equal(t, first.Factors, enc.Factors, "workers %d", w)
		assert.Equal(t, first.Record, enc.Record, "workers %d", w)
	}
}

func TestSampled(t *testing.T) {
	for _, r := range []int{0, 1, 100, measureAll + measureSampled, measureAll + measureSampled + 1, 1325} {
		idx := sampled(r)
		if r == 0 {
			assert.Empty(t, idx)
			continue
		}
		assert.Equal(t, 0, idx[0])
		assert.Equal(t, r-1, idx[len(idx)-1], "the last pair is measured")
		assert.LessOrEqual(t, len(idx), measureAll+measureSampled+1)
		for j := 1; j < len(idx); j++ {
			assert.Less(t, idx[j-1], idx[j])
		}
		if r > measureAll {
			assert.Equal(t, measureAll-1, idx[measureAll-1], "the first pairs are all measured")
		}
	}
}

// TestSampledMeasurementQuality compares the plan made from sampled
// measurements with the plan made from measuring every pair, on a matrix
// with more pairs than are measured exactly.
func TestSampledMeasurementQuality(t *testing.T) {
	if testing.Short() {
		t.Skip("measures every pair of a 768 x 1536 delta")
	}
	rng := rand.New(rand.NewPCG(9, 9))
	const rows, cols = 768, 1536
	delta := testDelta(rng, rows, cols, 128)
	budget := Budget(rows, cols, 8) // 452 pairs: more than are measured exactly
	svd, err := linalg.Exact(delta, rows, cols, SVDRank(rows, cols, 128, budget))
	require.NoError(t, err)
	require.Greater(t, svd.Rank, measureAll+measureSampled)
	sigma := make([]float64, svd.Rank)
	for i := range sigma {
		sigma[i] = float64(svd.S[i])
	}
	m := newMeasurer(svd, 128, 0)
	full := func(i, bits int) float64 { // every pair measured
		if bits == 0 {
			return sigma[i] * sigma[i]
		}
		var w roundTripper
		u, v := m.vectors(i)
		uq, vq := w.roundTrip(u, bits, m.opt, 0), w.roundTrip(v, bits, m.opt, 1)
		return sigma[i] * sigma[i] * max(1-2*dot(u, uq)*dot(v, vq)+dot(uq, uq)*dot(vq, vq), 0)
	}
	memo := map[[2]int]float64{}
	fullMemo := func(i, bits int) float64 {
		k := [2]int{i, bits}
		if e, ok := memo[k]; ok {
			return e
		}
		memo[k] = full(i, bits)
		return memo[k]
	}
	p := alloc.Problem{Rows: rows, Cols: cols, GroupSize: 128, Budget: budget, Sigma: sigma}
	p.Err = fullMemo
	exactPlan := alloc.Schedule{}.Plan(p)
	p.Err = m.err
	sampledPlan := alloc.Schedule{}.Plan(p)
	// Score both plans with the fully measured errors.
	score := func(bits []int) float64 {
		var e float64
		for i := range sigma {
			b := 0
			if i < len(bits) {
				b = bits[i]
			}
			e += fullMemo(i, b)
		}
		return e
	}
	var normSq float64
	for _, d := range delta {
		normSq += float64(d) * float64(d)
	}
	exactErr, sampledErr := math.Sqrt(score(exactPlan.Bits)/normSq), math.Sqrt(score(sampledPlan.Bits)/normSq)
	t.Logf("relative error: every pair measured %.5f, sampled %.5f", exactErr, sampledErr)
	// Sampling may only cost a small fraction of the plan's error.
	assert.Less(t, sampledErr, exactErr*1.002)
}

// BenchmarkEncode times Encode on a ladder of projection shapes at ratio 16
// with each SVD route. The large shapes are skipped under -short.
func BenchmarkEncode(b *testing.B) {
	ladder := []struct {
		rows, cols int
		large      bool
	}{
		{256, 256, false},
		{1024, 1024, false},
		{1024, 4096, true},
		{4096, 4096, true},
		{4096, 11008, true},
	}
	for _, sh := range ladder {
		for _, m := range []linalg.Route{linalg.RouteExact, linalg.RouteRandomized} {
			b.Run(fmt.Sprintf("%dx%d/%v", sh.rows, sh.cols, m), func(b *testing.B) {
				if sh.large && testing.Short() {
					b.Skip("large shape skipped under -short")
				}
				rng := rand.New(rand.NewPCG(1, 2))
				delta := testDelta(rng, sh.rows, sh.cols, 256)
				b.ResetTimer()
				for b.Loop() {
					if _, err := Encode(delta, sh.rows, sh.cols, Options{Ratio: 16, GroupSize: 128, SVD: m}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func TestDeltaChunks(t *testing.T) {
	// Several chunks and a partial one; values exact in bf16 and float32.
	n := 2*deltaChunk + 123
	ft, base := make([]byte, 2*n), make([]byte, 4*n)
	want := make([]float32, n)
	for i := range n {
		f, b := float32(i%7), float32(i%5)/4
		h := dtype.BF16FromFloat32(f)
		ft[2*i], ft[2*i+1] = byte(h), byte(h>>8)
		binary.LittleEndian.PutUint32(base[4*i:], math.Float32bits(b))
		want[i] = f - b
	}
	got := make([]float32, n)
	require.NoError(t, Delta(got, ft, safetensors.BF16, base, safetensors.F32))
	assert.Equal(t, want, got)

	// The first non-finite element of the fine-tune is named before any of
	// the base, whatever chunk each lies in.
	nan := math.Float32bits(float32(math.NaN()))
	binary.LittleEndian.PutUint32(base[4*5:], nan)
	inf := dtype.BF16FromFloat32(float32(math.Inf(1)))
	at := 2*deltaChunk + 7
	ft[2*at], ft[2*at+1] = byte(inf), byte(inf>>8)
	err := Delta(got, ft, safetensors.BF16, base, safetensors.F32)
	require.ErrorIs(t, err, ErrNonFinite)
	assert.Contains(t, err.Error(), fmt.Sprintf("fine-tune element %d is +Inf", at))
	ft[2*at], ft[2*at+1] = 0, 0
	err = Delta(got, ft, safetensors.BF16, base, safetensors.F32)
	require.ErrorIs(t, err, ErrNonFinite)
	assert.Contains(t, err.Error(), "base element 5 is NaN")

	assert.ErrorIs(t, Delta(got, ft[:2*n-2], safetensors.BF16, base, safetensors.F32), dtype.ErrLength)
	assert.ErrorIs(t, Delta(got, ft, safetensors.I16, base, safetensors.F32), dtype.ErrUnsupported)
}

// TestRandomizedWithinErrorTarget checks the error target of the randomized
// route where it counts, on the aggregate error after allocation and
// quantization: at most 1% above the exact route's with the same rule, on
// deltas shaped like the synthetic 7B layer's (slowly decaying spectrum, 30%
// of the energy in noise). Measured: +0.15% and +0.16%; the 7B layer itself
// (docs/PERFORMANCE.md): +0.71%.
func TestRandomizedWithinErrorTarget(t *testing.T) {
	for _, sh := range [][2]int{{512, 1024}, {1024, 512}} {
		rng := rand.New(rand.NewPCG(3, 4))
		delta := testDelta(rng, sh[0], sh[1], 256)
		var errs [2]float64
		for i, m := range []linalg.Route{linalg.RouteExact, linalg.RouteRandomized} {
			enc, err := Encode(delta, sh[0], sh[1], Options{Ratio: 16, GroupSize: 128, SVD: m})
			require.NoError(t, err)
			errs[i] = enc.Record.RelError
		}
		t.Logf("%dx%d: exact %.5f, randomized %.5f", sh[0], sh[1], errs[0], errs[1])
		assert.LessOrEqual(t, errs[1], errs[0]*1.01, "%dx%d", sh[0], sh[1])
		assert.GreaterOrEqual(t, errs[1], errs[0]*0.995, "%dx%d: the randomized route beating exact by much would mean the comparison is broken", sh[0], sh[1])
	}
}

// TestEncodeRecordsSVDFallback checks that a breakdown of the randomized
// route reaches the record: a delta of entries near 2⁻⁹⁰, whose float32
// Gram matrix underflows, is encoded from the exact route's SVD, as
// MethodExact encodes it, and the record says why.
func TestEncodeRecordsSVDFallback(t *testing.T) {
	const rows, cols = 256, 400
	rng := rand.New(rand.NewPCG(17, 5))
	delta := testDelta(rng, rows, cols, 64)
	opt := Options{Ratio: 16, GroupSize: 128, SVD: linalg.RouteRandomized}
	enc, err := Encode(delta, rows, cols, opt)
	require.NoError(t, err)
	assert.Empty(t, enc.Record.SVDFallback)

	for i := range delta {
		delta[i] *= 0x1p-80
	}
	enc, err = Encode(delta, rows, cols, opt)
	require.NoError(t, err)
	assert.Contains(t, enc.Record.SVDFallback, "exact route used")
	opt.SVD = linalg.RouteExact
	exact, err := Encode(delta, rows, cols, opt)
	require.NoError(t, err)
	assert.Empty(t, exact.Record.SVDFallback)
	assert.Equal(t, exact.Factors, enc.Factors)
	assert.Equal(t, exact.Record.RelError, enc.Record.RelError)
}

func TestMemoryEstimate(t *testing.T) {
	// The working sets that the bounds rest on: a 70B-class
	// matrix within 1.125 GiB (the pool's share of 2 GiB) at every ratio
	// from 8 to 64, a 405B-class MLP matrix within 2.5 GiB (its Gram
	// matrix alone is 1 GiB; 4 GiB leaves 1.5 for the pages, the
	// collector's headroom and the runtime); a 7B matrix is read whole and counts its float32 delta.
	const gib = 1 << 30
	for _, tc := range []struct {
		rows, cols int
		ratio      float64
		most       int64
	}{
		{4096, 11008, 16, gib / 2},
		{8192, 28672, 8, 9 * gib / 8}, {28672, 8192, 8, 9 * gib / 8}, {8192, 8192, 8, 9 * gib / 8},
		{1024, 8192, 8, 9 * gib / 8},
		{8192, 28672, 16, 9 * gib / 8}, {8192, 28672, 32, 9 * gib / 8}, {8192, 28672, 64, 9 * gib / 8},
		{16384, 53248, 16, 5 * gib / 2}, {53248, 16384, 16, 5 * gib / 2},
	} {
		opt := Options{Ratio: tc.ratio, GroupSize: 128}
		got := Memory(tc.rows, tc.cols, 4, opt, false)
		sym := Memory(tc.rows, tc.cols, 4, Options{Ratio: tc.ratio}, true)
		t.Logf("%d x %d at ratio %g: %.0f MiB, sym %.0f MiB", tc.rows, tc.cols, tc.ratio, float64(got)/(1<<20), float64(sym)/(1<<20))
		// The symmetric grid holds its dequantized vectors beside the factors.
		assert.GreaterOrEqual(t, sym, got)
		assert.LessOrEqual(t, got, tc.most, "%d x %d at ratio %g", tc.rows, tc.cols, tc.ratio)
		if !linalg.Streamed(tc.rows, tc.cols) {
			assert.Greater(t, got, 4*int64(tc.rows)*int64(tc.cols), "the whole delta")
		}
	}
}
