package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func bitsName(bits int) string { return fmt.Sprintf("%dbit", bits) }

func gaussian(rng *rand.Rand, n int, sigma float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * sigma)
	}
	return x
}

// quantized holds the outputs of one Quantize call.
type quantized struct {
	codes        []uint8
	scales, mins []uint16
	sqErr        float64
}

func quantize(x []float32, bits int, opt Options) quantized {
	g := NumGroups(len(x), opt.GroupSize)
	q := quantized{codes: make([]uint8, len(x)), scales: make([]uint16, g), mins: make([]uint16, g)}
	q.sqErr = Quantize(x, bits, opt, q.codes, q.scales, q.mins)
	return q
}

// dequantSqErr dequantizes q and returns the dequantized vector and its
// squared error against x, summed in one flat loop.
func dequantSqErr(x []float32, q quantized, bits, groupSize int) ([]float32, float64) {
	xh := make([]float32, len(x))
	Dequantize(xh, q.codes, q.scales, q.mins, bits, groupSize)
	var e float64
	for i := range x {
		d := float64(x[i]) - float64(xh[i])
		e += d * d
	}
	return xh, e
}

// sumTol is the relative tolerance between two float64 sums of the same n
// nonnegative terms added in different orders (Quantize sums per group, then
// the groups; the tests sum flat): each sum is within n*2^-53 of the exact one.
func sumTol(n int) float64 { return 2 * float64(n+1) * 0x1p-53 }

func allFinite(t *testing.T, xs []float32) {
	t.Helper()
	for i, v := range xs {
		require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0), "element %d is %v", i, v)
	}
}

func TestQuantizeMatchesDequantize(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, clip := range []bool{false, true} {
		for bits := 1; bits <= MaxBits; bits++ {
			for _, n := range []int{1, 2, 5, 127, 128, 129, 1000} {
				t.Run(fmt.Sprintf("clip=%v/%s/n=%d", clip, bitsName(bits), n), func(t *testing.T) {
					opt := Options{GroupSize: 128, ClipSearch: clip}
					x := gaussian(rng, n, 0.02)
					q := quantize(x, bits, opt)
					for _, c := range q.codes {
						require.Less(t, int(c), 1<<bits)
					}
					xh, e := dequantSqErr(x, q, bits, opt.GroupSize)
					allFinite(t, xh)
					assert.InEpsilon(t, e, q.sqErr, sumTol(n))
					assert.InEpsilon(t, q.sqErr, QuantizeError(x, bits, opt), sumTol(n), "QuantizeError agrees")
				})
			}
		}
	}
}

func TestQuantizeMonotoneInBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, clip := range []bool{false, true} {
		for trial := range 4 {
			x := gaussian(rng, 4096, 1)
			opt := Options{GroupSize: 128, ClipSearch: clip}
			prev := math.Inf(1)
			for bits := 1; bits <= MaxBits; bits++ {
				e := QuantizeError(x, bits, opt)
				assert.LessOrEqual(t, e, prev, "clip=%v trial %d: %d bits worse than %d", clip, trial, bits, bits-1)
				prev = e
			}
		}
	}
}

// distributions a singular vector's groups may look like.
var distributions = []struct {
	name string
	gen  func(rng *rand.Rand) float64
}{
	{"gaussian", func(rng *rand.Rand) float64 { return rng.NormFloat64() }},
	{"uniform", func(rng *rand.Rand) float64 { return rng.Float64()*2 - 1 }},
	{"laplace", func(rng *rand.Rand) float64 { return rng.ExpFloat64() * float64(1-2*rng.IntN(2)) }},
	{"outliers", func(rng *rand.Rand) float64 {
		if rng.IntN(50) == 0 {
			return 30 * rng.NormFloat64()
		}
		return rng.NormFloat64()
	}},
	{"skewed", func(rng *rand.Rand) float64 { return rng.ExpFloat64() }},
}

func TestClipSearchNeverWorse(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, d := range distributions {
		t.Run(d.name, func(t *testing.T) {
			for trial := range 20 {
				x := make([]float32, 128+rng.IntN(64))
				for i := range x {
					x[i] = float32(d.gen(rng) * 0.01)
				}
				for bits := 1; bits <= MaxBits; bits++ {
					// Compare group by group: each group's choice is independent.
					for g := 0; g < len(x); g += 32 {
						grp := x[g:min(g+32, len(x))]
						plain := QuantizeError(grp, bits, Options{GroupSize: 32})
						clip := QuantizeError(grp, bits, Options{GroupSize: 32, ClipSearch: true})
						require.LessOrEqual(t, clip, plain, "trial %d bits %d group %d", trial, bits, g/32)
					}
				}
			}
		})
	}
}

// TestClipSearchGain measures, and logs, how much clip search lowers the
// squared error on Gaussian vectors; the numbers are quoted in doc.go.
func TestClipSearchGain(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const nVec = 8
	xs := make([][]float32, nVec)
	for i := range xs {
		xs[i] = gaussian(rng, 4096, 1/64.0) // a unit vector of length 4096 has entries ~1/64
	}
	// Upper bounds on error(clip)/error(plain), a little above the measured
	// ratios, so that a regression of the search fails the test.
	maxRatio := map[int]float64{1: 0.15, 2: 0.5, 3: 0.75, 4: 0.88, 5: 0.95, 6: 0.95, 7: 0.95, 8: 0.95}
	for bits := 1; bits <= MaxBits; bits++ {
		var plain, clip float64
		for _, x := range xs {
			plain += QuantizeError(x, bits, Options{GroupSize: DefaultGroupSize})
			clip += QuantizeError(x, bits, DefaultOptions())
		}
		ratio := clip / plain
		t.Logf("%d bits: MSE plain %.4g, clip search %.4g, ratio %.3f (%.1f%% lower)",
			bits, plain/(nVec*4096), clip/(nVec*4096), ratio, 100*(1-ratio))
		assert.Less(t, ratio, maxRatio[bits], "%d bits", bits)
	}
}

func TestDegenerateGroups(t *testing.T) {
	const bf16Tenth = 0x3dcd // bf16 nearest 0.1: 0.10009765625
	tests := []struct {
		name     string
		x        []float32
		wantMin  uint16
		wantXHat float32
	}{
		{"zeros", []float32{0, 0, 0, 0}, 0x0000, 0},
		{"negative zeros", []float32{float32(math.Copysign(0, -1)), 0}, 0x8000, 0},
		{"constant exact", []float32{1.5, 1.5, 1.5}, 0x3fc0, 1.5},
		{"constant inexact", []float32{0.1, 0.1}, bf16Tenth, dtype.Float32FromBF16(bf16Tenth)},
		{"single element", []float32{-3}, 0xc040, -3},
		// A range of 2^-140 is below the smallest bf16 scale (2^-133), so the
		// scale rounds to 0 for every width.
		{"scale underflows", []float32{0x1p-120, 0x1p-120 + 0x1p-140}, 0x0380, 0x1p-120},
	}
	for _, tc := range tests {
		for _, clip := range []bool{false, true} {
			for _, bits := range []int{1, 2, 8} {
				t.Run(fmt.Sprintf("%s/clip=%v/%s", tc.name, clip, bitsName(bits)), func(t *testing.T) {
					opt := Options{GroupSize: 128, ClipSearch: clip}
					q := quantize(tc.x, bits, opt)
					assert.Equal(t, []uint16{0}, q.scales)
					assert.Equal(t, []uint16{tc.wantMin}, q.mins)
					assert.Equal(t, make([]uint8, len(tc.x)), q.codes)
					xh, e := dequantSqErr(tc.x, q, bits, opt.GroupSize)
					for _, v := range xh {
						assert.Equal(t, tc.wantXHat, v)
					}
					assert.Equal(t, e, q.sqErr)
				})
			}
		}
	}
}

func TestConstantGroupBesideNormalOne(t *testing.T) {
	x := []float32{0.25, 0.25, 0.25, 0.25, -1, 0, 0.5, 1}
	for _, bits := range []int{2, 3} {
		q := quantize(x, bits, Options{GroupSize: 4, ClipSearch: true})
		assert.Equal(t, uint16(0), q.scales[0])
		assert.NotEqual(t, uint16(0), q.scales[1])
		xh, e := dequantSqErr(x, q, bits, 4)
		assert.Equal(t, []float32{0.25, 0.25, 0.25, 0.25}, xh[:4])
		assert.InEpsilon(t, e, q.sqErr, sumTol(len(x)))
	}
}

// TestPowerOfTwoScaling checks that quantizing 2^k * x gives the same codes
// and 2^2k times the error, down to tiny magnitudes: bf16 and the search are
// exact under power-of-two scaling as long as no value leaves the normal
// float32 range.
func TestPowerOfTwoScaling(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	x := gaussian(rng, 300, 1)
	for _, k := range []int{-100, -60, 40, 100} {
		for _, bits := range []int{2, 3, 8} {
			t.Run(fmt.Sprintf("2^%d/%s", k, bitsName(bits)), func(t *testing.T) {
				opt := Options{GroupSize: 64, ClipSearch: true}
				f := float32(math.Ldexp(1, k))
				xs := make([]float32, len(x))
				for i, v := range x {
					xs[i] = v * f
				}
				q := quantize(x, bits, opt)
				qs := quantize(xs, bits, opt)
				assert.Equal(t, q.codes, qs.codes)
				assert.Equal(t, q.sqErr*math.Ldexp(1, 2*k), qs.sqErr)
			})
		}
	}
}

func TestExtremeMagnitudesStayFinite(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	tests := []struct {
		name string
		x    []float32
	}{
		{"1e-30", gaussian(rng, 200, 1e-30)},
		{"float32 subnormal 1e-40", gaussian(rng, 200, 1e-40)},
		{"smallest subnormals", []float32{0x1p-149, -0x1p-149, 0, 0x1p-148}},
		{"subnormal and normal", []float32{0x1p-149, 1e-38, 3e-38, -2e-38}},
		{"float32 limits", []float32{math.MaxFloat32, -math.MaxFloat32, 0, 1e38, -3e38}},
		{"near float32 max", []float32{3.3e38, 3.4e38, 3.2e38, math.MaxFloat32}},
		{"huge negative", []float32{-math.MaxFloat32, -math.MaxFloat32, -1e38}},
	}
	for _, tc := range tests {
		for _, clip := range []bool{false, true} {
			for bits := 1; bits <= MaxBits; bits++ {
				t.Run(fmt.Sprintf("%s/clip=%v/%s", tc.name, clip, bitsName(bits)), func(t *testing.T) {
					opt := Options{GroupSize: 64, ClipSearch: clip}
					q := quantize(tc.x, bits, opt)
					for g := range q.scales {
						allFinite(t, []float32{dtype.Float32FromBF16(q.scales[g]), dtype.Float32FromBF16(q.mins[g])})
					}
					xh, e := dequantSqErr(tc.x, q, bits, opt.GroupSize)
					allFinite(t, xh)
					require.False(t, math.IsInf(q.sqErr, 0) || math.IsNaN(q.sqErr))
					assert.InEpsilon(t, e+1e-300, q.sqErr+1e-300, sumTol(len(tc.x)))
				})
			}
		}
	}
}

// TestEightBitMaxError checks the plain 8-bit grid's worst-case error: an
// element within the grid is at most scale/2 from a grid point; the bf16
// rounding of min and scale (relative error <= 2^-8 each: bf16 keeps 8
// significant bits) can move the grid's ends by up to 2^-8*(|min| + range),
// which bounds the error of elements beyond them; float32 evaluation of the
// grid points adds at most 2^-24 relative to their magnitude.
func TestEightBitMaxError(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	const groupSize = 128
	for _, d := range distributions {
		t.Run(d.name, func(t *testing.T) {
			x := make([]float32, 10*groupSize)
			for i := range x {
				x[i] = float32(d.gen(rng)*0.03 + 0.01)
			}
			q := quantize(x, 8, Options{GroupSize: groupSize})
			xh, _ := dequantSqErr(x, q, 8, groupSize)
			for g := range q.scales {
				grp := x[g*groupSize : (g+1)*groupSize]
				lo, hi := float64(grp[0]), float64(grp[0])
				for _, v := range grp {
					lo, hi = math.Min(lo, float64(v)), math.Max(hi, float64(v))
				}
				s := float64(dtype.Float32FromBF16(q.scales[g]))
				m := float64(dtype.Float32FromBF16(q.mins[g]))
				bound := s/2 + 0x1p-8*(math.Abs(lo)+hi-lo) + 0x1p-24*(math.Abs(m)+255*s)
				for i, v := range grp {
					assert.LessOrEqual(t, math.Abs(float64(v)-float64(xh[g*groupSize+i])), bound, "group %d element %d", g, i)
				}
			}
		})
	}
}

func TestNonFiniteInputDoesNotPanic(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, x := range [][]float32{{nan, 1, 2}, {1, nan, 2}, {inf, 0, 1}, {-inf, inf}, {nan, nan}} {
		for _, clip := range []bool{false, true} {
			for _, bits := range []int{2, 8} {
				q := quantize(x, bits, Options{GroupSize: 2, ClipSearch: clip})
				for _, c := range q.codes {
					assert.Less(t, int(c), 1<<bits, "x=%v", x)
				}
			}
		}
	}
}

func TestNoAllocations(t *testing.T) {
	x := gaussian(rand.New(rand.NewPCG(17, 18)), 1000, 1)
	opt := DefaultOptions()
	g := NumGroups(len(x), opt.GroupSize)
	codes, scales, mins := make([]uint8, len(x)), make([]uint16, g), make([]uint16, g)
	assert.Zero(t, testing.AllocsPerRun(5, func() { Quantize(x, 3, opt, codes, scales, mins) }))
	assert.Zero(t, testing.AllocsPerRun(5, func() { QuantizeError(x, 3, opt) }))
	xh := make([]float32, len(x))
	assert.Zero(t, testing.AllocsPerRun(5, func() { Dequantize(xh, codes, scales, mins, 3, opt.GroupSize) }))

	buf := make([]byte, 0, 4096)
	var w BitWriter
	var r BitReader
	assert.Zero(t, testing.AllocsPerRun(5, func() {
		w.Reset(buf)
		w.WriteCodes(codes, 3)
		w.Write(5, 3)
		r.Reset(w.Bytes())
		_ = r.ReadCodes(codes, 3)
		_, _ = r.Read(3)
	}))
}

func TestQuantizePanicsOnProgrammerErrors(t *testing.T) {
	x := make([]float32, 10)
	ok := func(bits int, opt Options, nCodes, nGroups int) func() {
		return func() {
			Quantize(x, bits, opt, make([]uint8, nCodes), make([]uint16, nGroups), make([]uint16, nGroups))
		}
	}
	assert.NotPanics(t, ok(2, Options{GroupSize: 4}, 10, 3))
	assert.Panics(t, ok(0, Options{GroupSize: 4}, 10, 3), "bits 0")
	assert.Panics(t, ok(9, Options{GroupSize: 4}, 10, 3), "bits 9")
	assert.Panics(t, ok(2, Options{}, 10, 3), "group size 0")
	assert.Panics(t, ok(2, Options{GroupSize: 4}, 9, 3), "codes too short")
	assert.Panics(t, ok(2, Options{GroupSize: 4}, 10, 2), "too few groups")
	assert.Panics(t, func() { Dequantize(make([]float32, 10), make([]uint8, 10), nil, nil, 2, 4) })
	assert.Panics(t, func() { QuantizeError(x, 2, Options{GroupSize: -1}) })
}

func TestQuantizeEmpty(t *testing.T) {
	assert.Equal(t, 0.0, Quantize(nil, 3, DefaultOptions(), nil, nil, nil))
	assert.Equal(t, 0.0, QuantizeError(nil, 3, DefaultOptions()))
	assert.Equal(t, 0, NumGroups(0, 128))
	assert.Equal(t, 1, NumGroups(128, 128))
	assert.Equal(t, 2, NumGroups(129, 128))
}

func BenchmarkQuantize(b *testing.B) {
	x := gaussian(rand.New(rand.NewPCG(15, 16)), 4096, 1/64.0)
	for _, bits := range []int{2, 8} {
		for _, clip := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/clip=%v", bitsName(bits), clip), func(b *testing.B) {
				opt := Options{GroupSize: DefaultGroupSize, ClipSearch: clip}
				g := NumGroups(len(x), opt.GroupSize)
				codes, scales, mins := make([]uint8, len(x)), make([]uint16, g), make([]uint16, g)
				b.SetBytes(int64(4 * len(x)))
				for b.Loop() {
					Quantize(x, bits, opt, codes, scales, mins)
				}
			})
		}
	}
}
