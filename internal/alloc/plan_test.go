package alloc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// errRelTol is the relative tolerance for comparing total squared errors
// computed by different summation orders: a few hundred float64 additions of
// positive terms, each rounding by ≤ 2⁻⁵³ relative, stay below 1e-13.
const errRelTol = 1e-12

// factorModel returns Err(i, b) = sigma[i]²·c[b], the error model of a
// quantizer whose relative error depends only on the width; c[0] must be 1.
func factorModel(sigma []float64, c [MaxBits + 1]float64) func(i, bits int) float64 {
	return func(i, bits int) float64 { return sigma[i] * sigma[i] * c[bits] }
}

// pow4Factors is c_b = 4^-b: each extra bit halves the quantization step and
// quarters the error.
func pow4Factors() [MaxBits + 1]float64 {
	var c [MaxBits + 1]float64
	for b := range c {
		c[b] = math.Pow(4, -float64(b))
	}
	return c
}

// randomFactors returns a random decreasing table c with c[0] = 1: each
// extra bit divides the error by a factor in [1.5, 6].
func randomFactors(rng *rand.Rand) [MaxBits + 1]float64 {
	var c [MaxBits + 1]float64
	c[0] = 1
	for b := 1; b <= MaxBits; b++ {
		c[b] = c[b-1] / (1.5 + 4.5*rng.Float64())
	}
	return c
}

// powerSpectrum returns r singular values s_i = scale·(i+1)^-alpha.
func powerSpectrum(r int, alpha, scale float64) []float64 {
	s := make([]float64, r)
	for i := range s {
		s[i] = scale * math.Pow(float64(i+1), -alpha)
	}
	return s
}

// fp16Budget is the byte budget of a rows x cols fp16 matrix at ratio.
func fp16Budget(rows, cols int, ratio float64) int64 {
	return int64(float64(rows*cols*2) / ratio)
}

// checkPlan asserts the invariants every plan must satisfy and returns the
// set of widths it used.
func checkPlan(t *testing.T, p Problem, plan Plan) {
	t.Helper()
	g := p.GroupSize
	if g == 0 {
		g = DefaultGroupSize
	}
	assert.LessOrEqual(t, plan.Bytes, p.Budget, "budget exceeded")
	assert.Equal(t, Cost(p.Rows, p.Cols, g, plan.Bits), plan.Bytes, "Bytes must be Cost(Bits)")
	assert.LessOrEqual(t, len(plan.Bits), len(p.Sigma))
	if len(plan.Bits) > 0 {
		assert.NotZero(t, plan.Bits[len(plan.Bits)-1], "trailing zeros must be trimmed")
	}
	for i := 1; i < len(plan.Bits); i++ {
		assert.LessOrEqual(t, plan.Bits[i], plan.Bits[i-1], "widths must not increase at %d", i)
	}
	want := 0.0
	for i := range p.Sigma {
		b := 0
		if i < len(plan.Bits) {
			b = plan.Bits[i]
		}
		want += p.Err(i, b)
	}
	assert.InDelta(t, want, plan.SqErr, errRelTol*want)
}

func mustParse(t testing.TB, s string) Schedule {
	sch, err := ParseSchedule(s)
	require.NoError(t, err)
	return sch
}

func TestPlanInvariantsRandomSweep(t *testing.T) {
	rng := rand.New(rand.NewPCG(2406, 8903))
	shapes := [][2]int{{5, 3}, {128, 384}, {384, 384}, {1024, 384}, {384, 1024}, {4096, 4096}, {1000, 37}, {1, 1}}
	schedules := []string{"auto", "auto:8,4,3,2", "auto:2", "greedy", "greedy:8,3,2", "paper",
		"8:2,3:32,2:rest", "4:10", "8:1,1:rest", "3:5,2:5"}
	for trial := range 120 {
		sh := shapes[rng.IntN(len(shapes))]
		rows, cols := sh[0], sh[1]
		r := min(rows, cols, 1+rng.IntN(300))
		var budget int64
		switch rng.IntN(4) {
		case 0:
			budget = int64(rng.IntN(200)) // tiny: often nothing fits
		default:
			budget = fp16Budget(rows, cols, 2+62*rng.Float64())
		}
		sigma := powerSpectrum(r, 2*rng.Float64(), 1+10*rng.Float64())
		if rng.IntN(5) == 0 {
			for i := r / 2; i < r; i++ {
				sigma[i] = 0 // exactly rank-deficient tail
			}
		}
		c := randomFactors(rng)
		if rng.IntN(3) == 0 {
			c[1] = 1.5 // 1-bit codes worse than dropping, as for min/max RTN
		}
		p := Problem{Rows: rows, Cols: cols, GroupSize: []int{0, 32, 128}[rng.IntN(3)],
			Budget: budget, Sigma: sigma, Err: factorModel(sigma, c)}
		plans := map[string]Plan{}
		for _, s := range schedules {
			t.Run(fmt.Sprintf("%d/%dx%d_r%d_B%d/%s", trial, rows, cols, r, budget, s), func(t *testing.T) {
				sch := mustParse(t, s)
				plan := sch.Plan(p)
				checkPlan(t, p, plan)
				allowed := map[int]bool{0: true}
				switch sch.kind {
				case kindAuto, kindGreedy:
					for _, w := range sch.widthSet() {
						allowed[w] = true
					}
				case kindPaper:
					allowed[8], allowed[3], allowed[2] = true, true, true
				case kindList:
					for _, b := range sch.bands {
						allowed[b.bits] = true
					}
				}
				for i, b := range plan.Bits {
					assert.True(t, allowed[b], "pair %d: width %d not in schedule %s", i, b, s)
				}
				plans[s] = plan
			})
		}
		auto := plans["auto"]
		assert.LessOrEqual(t, auto.SqErr, plans["greedy"].SqErr, "trial %d: auto worse than greedy", trial)
		assert.LessOrEqual(t, auto.SqErr, plans["paper"].SqErr, "trial %d: auto worse than paper", trial)
		assert.LessOrEqual(t, auto.SqErr, plans["auto:8,4,3,2"].SqErr*(1+errRelTol),
			"trial %d: a superset of widths cannot do worse when both are optimal", trial)
	}
}

// bruteForce returns the least error over all non-increasing width vectors
// of length r over {0} ∪ widths that fit the budget, by enumeration.
func bruteForce(p Problem, widths []int) float64 {
	choices := append(slices.Clone(widths), 0) // decreasing
	r := len(p.Sigma)
	bits := make([]int, r)
	best := math.Inf(1)
	var rec func(i, minChoice int)
	rec = func(i, minChoice int) {
		if i == r {
			if Cost(p.Rows, p.Cols, p.groupSize(), bits) <= p.Budget {
				e := 0.0
				for j, b := range bits {
					e += p.Err(j, b)
				}
				best = min(best, e)
			}
			return
		}
		for c := minChoice; c < len(choices); c++ {
			bits[i] = choices[c]
			rec(i+1, c)
		}
	}
	rec(0, 0)
	return best
}

// randomErr returns an Err with Err(i, 0) = sigma[i]² and otherwise random
// values in (0, 1.2·sigma[i]²): not monotone in the width, not separable, so
// only an exact search finds the optimum reliably.
func randomErr(rng *rand.Rand, sigma []float64) func(i, bits int) float64 {
	tab := make([][MaxBits + 1]float64, len(sigma))
	for i, s := range sigma {
		tab[i][0] = s * s
		for b := 1; b <= MaxBits; b++ {
			tab[i][b] = s * s * 1.2 * rng.Float64()
		}
	}
	return func(i, bits int) float64 { return tab[i][bits] }
}

func TestAutoMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 16))
	widthSets := [][]int{{8, 4, 3, 2, 1}, {8, 3, 2}, {4, 2}, {5}}
	for trial := range 60 {
		rows, cols := 1+rng.IntN(40), 1+rng.IntN(40)
		r := 1 + rng.IntN(7)
		sigma := powerSpectrum(r, rng.Float64(), 1)
		widths := widthSets[trial%len(widthSets)]
		full := Cost(rows, cols, 8, slices.Repeat([]int{widths[0]}, r))
		p := Problem{Rows: rows, Cols: cols, GroupSize: 8, Budget: rng.Int64N(full + 2), Sigma: sigma}
		if trial%2 == 0 {
			p.Err = factorModel(sigma, randomFactors(rng))
		} else {
			p.Err = randomErr(rng, sigma)
		}
		t.Run(fmt.Sprintf("%d/%dx%d_r%d_B%d_w%v", trial, rows, cols, r, p.Budget, widths), func(t *testing.T) {
			want := bruteForce(p, widths)
			sch := Schedule{kind: kindAuto, widths: widths}
			got := sch.Plan(p)
			checkPlan(t, p, got)
			assert.InDelta(t, want, got.SqErr, errRelTol*want)

			// The search used above the exact-DP size limit must find the
			// optimum on these tiny problems too.
			tab := newTable(p, widths)
			heuristic := tab.improve(tab.lagrange())
			require.True(t, tab.fits(heuristic))
			assert.InDelta(t, want, tab.directErr(heuristic), errRelTol*want)
		})
	}
}

func TestExactDPMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for trial := range 40 {
		rows, cols := 1+rng.IntN(20), 1+rng.IntN(20)
		r := 1 + rng.IntN(8)
		sigma := powerSpectrum(r, rng.Float64(), 1)
		widths := []int{8, 4, 3, 2, 1}
		full := Cost(rows, cols, 4, slices.Repeat([]int{8}, r))
		p := Problem{Rows: rows, Cols: cols, GroupSize: 4, Budget: rng.Int64N(full + 2), Sigma: sigma, Err: randomErr(rng, sigma)}
		t.Run(fmt.Sprint(trial), func(t *testing.T) {
			tab := newTable(p, widths)
			b := tab.exact()
			require.True(t, tab.fits(b))
			want := bruteForce(p, widths)
			assert.InDelta(t, want, tab.directErr(b), errRelTol*want)
		})
	}
}

// repeatBits returns the widths of consecutive bands given as (width, count)
// pairs.
func repeatBits(bandsFlat ...int) []int {
	var bits []int
	for i := 0; i < len(bandsFlat); i += 2 {
		bits = append(bits, slices.Repeat([]int{bandsFlat[i]}, bandsFlat[i+1])...)
	}
	return bits
}

func TestPaperFit(t *testing.T) {
	tests := []struct {
		name       string
		rows, cols int
		r          int
		budget     int64
		want       []int
	}{
		// 2 MiB budget. Per pair: (32+32)·4 + 4 = 260 bytes overhead, 1024
		// code bytes per bit of width. 8- and 3-bit bands: 112·1024 +
		// 34·260 = 123528 bytes; a 2-bit pair costs 2308, and
		// (2097152 - 123528) / 2308 = 855.1 → 855 pairs.
		{name: "7B attention ratio 16", rows: 4096, cols: 4096, r: 4096, budget: 4096 * 4096 * 2 / 16,
			want: repeatBits(8, 2, 3, 32, 2, 855)},
		// Rank caps the bands: 10 pairs only.
		{name: "rank 10", rows: 4096, cols: 4096, r: 10, budget: 4096 * 4096 * 2 / 16,
			want: repeatBits(8, 2, 3, 8)},
		// Budget 6144. Per pair 20 bytes overhead, 64 code bytes per bit:
		// 8-bit pairs 532, 3-bit 212, 2-bit 148. Two 8-bit pairs (1064),
		// then 23 3-bit pairs (5940 in all; a 24th would make 6152), then
		// one 2-bit pair still fits (6088).
		{name: "tiny q_proj ratio 16", rows: 128, cols: 384, r: 128, budget: 6144,
			want: repeatBits(8, 2, 3, 23, 2, 1)},
		// 531 bytes: no 8-bit pair (532); two 3-bit pairs (424); no 2-bit
		// pair (572).
		{name: "under one 8-bit pair", rows: 128, cols: 384, r: 128, budget: 531, want: []int{3, 3}},
		{name: "exactly one 8-bit pair", rows: 128, cols: 384, r: 128, budget: 532, want: []int{8}},
		{name: "zero budget", rows: 128, cols: 384, r: 128, budget: 0, want: nil},
		{name: "no pairs", rows: 128, cols: 384, r: 0, budget: 6144, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sigma := powerSpectrum(tc.r, 0.5, 1)
			p := Problem{Rows: tc.rows, Cols: tc.cols, Budget: tc.budget, Sigma: sigma, Err: factorModel(sigma, pow4Factors())}
			got := mustParse(t, "paper").Plan(p)
			checkPlan(t, p, got)
			assert.Equal(t, tc.want, got.Bits)
			assert.Equal(t, got, mustParse(t, "8:2,3:32,2:rest").Plan(p), "paper is the list 8:2,3:32,2:rest")
		})
	}
}

func TestListBands(t *testing.T) {
	// 5 x 3 matrix, group 2: 24 bytes overhead per pair; codes cost
	// ceil(5·Σb/8) + ceil(3·Σb/8).
	sigma := powerSpectrum(6, 0.5, 1)
	tests := []struct {
		schedule string
		budget   int64
		want     []int
	}{
		// Σb = 8+8 = 16: 10 + 6 code bytes + 48 = 64.
		{schedule: "8:2", budget: 64, want: []int{8, 8}},
		{schedule: "8:2", budget: 63, want: []int{8}},
		// Counts cap at the pairs left: 6 pairs of 1 bit, Σb = 6: 4 + 3 +
		// 144 = 151.
		{schedule: "1:rest", budget: 1000, want: repeatBits(1, 6)},
		{schedule: "1:100", budget: 1000, want: repeatBits(1, 6)},
		// 4:1 costs 3 + 2 + 24 = 29; then 2-bit pairs: with k of them Σb =
		// 4 + 2k, cost ceil(5(4+2k)/8) + ceil(3(4+2k)/8) + 24(k+1); k = 2
		// costs 5 + 3 + 72 = 80, k = 3 costs 7 + 4 + 96 = 107.
		{schedule: "4:1,2:rest", budget: 106, want: []int{4, 2, 2}},
		{schedule: "4:1,2:rest", budget: 107, want: []int{4, 2, 2, 2}},
		// A band cut short by the budget leaves the rest to later bands:
		// 8:3 fits one pair in 40 (32 bytes; two cost 64), and adding a
		// 1-bit pair makes Σb = 9: 6 + 4 + 48 = 58 bytes, which fits only
		// the larger budget.
		{schedule: "8:3,1:1", budget: 40, want: []int{8}},
		{schedule: "8:3,1:1", budget: 58, want: []int{8, 1}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/B%d", tc.schedule, tc.budget), func(t *testing.T) {
			p := Problem{Rows: 5, Cols: 3, GroupSize: 2, Budget: tc.budget, Sigma: sigma, Err: factorModel(sigma, pow4Factors())}
			got := mustParse(t, tc.schedule).Plan(p)
			checkPlan(t, p, got)
			assert.Equal(t, tc.want, got.Bits)
		})
	}
}

func TestPlanPanicsOnProgrammerErrors(t *testing.T) {
	sigma := []float64{3, 2, 1}
	good := Problem{Rows: 4, Cols: 4, Budget: 100, Sigma: sigma, Err: factorModel(sigma, pow4Factors())}
	tests := []struct {
		name   string
		modify func(p *Problem)
	}{
		{"zero rows", func(p *Problem) { p.Rows = 0 }},
		{"negative group", func(p *Problem) { p.GroupSize = -1 }},
		{"negative budget", func(p *Problem) { p.Budget = -1 }},
		{"nil Err", func(p *Problem) { p.Err = nil }},
		{"increasing sigma", func(p *Problem) { p.Sigma = []float64{1, 2} }},
		{"negative sigma", func(p *Problem) { p.Sigma = []float64{1, -1} }},
		{"NaN sigma", func(p *Problem) { p.Sigma = []float64{math.NaN()} }},
		{"NaN Err", func(p *Problem) { p.Err = func(int, int) float64 { return math.NaN() } }},
		{"negative Err", func(p *Problem) { p.Err = func(int, int) float64 { return -1 } }},
	}
	for _, tc := range tests {
		for _, s := range []string{"auto", "greedy", "paper", "4:rest"} {
			t.Run(tc.name+"/"+s, func(t *testing.T) {
				p := good
				tc.modify(&p)
				assert.Panics(t, func() { mustParse(t, s).Plan(p) })
			})
		}
	}
	assert.NotPanics(t, func() { Schedule{}.Plan(good) })
}

func TestAutoNonMonotoneErr(t *testing.T) {
	// 1-bit codes worse than dropping and 4-bit worse than 3-bit: auto must
	// never use a width where a cheaper one is better, and must still beat
	// or match greedy.
	sigma := powerSpectrum(200, 0.5, 1)
	c := pow4Factors()
	c[1] = 1.5
	c[4] = c[3] * 1.1
	p := Problem{Rows: 512, Cols: 512, Budget: fp16Budget(512, 512, 16), Sigma: sigma, Err: factorModel(sigma, c)}
	auto := Schedule{}.Plan(p)
	checkPlan(t, p, auto)
	assert.NotContains(t, auto.Bits, 1)
	assert.NotContains(t, auto.Bits, 4)
	assert.LessOrEqual(t, auto.SqErr, mustParse(t, "greedy").Plan(p).SqErr)
}

// TestAutoSearchNearExact compares the search auto uses above the exact-DP
// size limit with the exact DP on medium problems, where both are affordable.
func TestAutoSearchNearExact(t *testing.T) {
	// On every problem tried while tuning, the search found the exact
	// optimum; a relative gap of 1e-6 leaves room for a spectrum that needs
	// a boundary move wider than windowRadius.
	const gapTol = 1e-6
	rng := rand.New(rand.NewPCG(77, 78))
	shapes := [][2]int{{128, 384}, {384, 384}, {1024, 384}, {600, 900}}
	worst := 0.0
	for trial := range 16 {
		sh := shapes[trial%len(shapes)]
		r := min(sh[0], sh[1])
		sigma := powerSpectrum(r, 0.25+rng.Float64(), 1)
		c := randomFactors(rng)
		if trial%3 == 0 {
			c[1] = 1.3
		}
		p := Problem{Rows: sh[0], Cols: sh[1], Budget: fp16Budget(sh[0], sh[1], []float64{8, 16, 32}[rng.IntN(3)]),
			Sigma: sigma, Err: factorModel(sigma, c)}
		t.Run(fmt.Sprintf("%d/%dx%d", trial, sh[0], sh[1]), func(t *testing.T) {
			tab := newTable(p, defaultWidths)
			exact := tab.directErr(tab.exact())
			search := tab.improve(tab.lagrange())
			require.True(t, tab.fits(search))
			gap := tab.directErr(search)/exact - 1
			worst = max(worst, gap)
			assert.LessOrEqual(t, gap, gapTol)
			assert.GreaterOrEqual(t, gap, -errRelTol, "the exact DP cannot be beaten")
		})
	}
	t.Logf("worst relative gap of the search to the exact optimum: %.3g", worst)
}
