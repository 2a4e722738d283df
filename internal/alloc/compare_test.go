package alloc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// rtnFactors estimates c_b for b = 0..MaxBits for data-free round-to-nearest
// quantization of Gaussian-like unit vectors with groups of 128, an
// asymmetric min/max grid and bf16 scale and minimum, the project's default
// quantizer: per vector e_b = ‖x̂ - x‖²/‖x‖², and a pair whose two vectors
// both carry independent errors loses c_b = 2·e_b + e_b² of its energy
// (‖uvᵀ - ûv̂ᵀ‖² with cross terms vanishing in expectation).
func rtnFactors(rng *rand.Rand) [MaxBits + 1]float64 {
	const n, group, trials = 4096, 128, 8
	var c [MaxBits + 1]float64
	c[0] = 1
	x := make([]float64, n)
	for b := 1; b <= MaxBits; b++ {
		levels := float64(int(1)<<b - 1)
		var errSum, normSum float64
		for range trials {
			for i := range x {
				x[i] = rng.NormFloat64()
			}
			for g := 0; g < n; g += group {
				lo, hi := math.Inf(1), math.Inf(-1)
				for _, v := range x[g : g+group] {
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
				scale := bf16((hi - lo) / levels)
				lo = bf16(lo)
				for _, v := range x[g : g+group] {
					q := math.Max(0, math.Min(levels, math.Round((v-lo)/scale)))
					d := q*scale + lo - v
					errSum += d * d
					normSum += v * v
				}
			}
		}
		e := errSum / normSum
		c[b] = 2*e + e*e
	}
	return c
}

// bf16 rounds x to the nearest bfloat16 (8 significand bits).
func bf16(x float64) float64 {
	if x == 0 {
		return 0
	}
	exp := math.Floor(math.Log2(math.Abs(x)))
	ulp := math.Pow(2, exp-7)
	return math.Round(x/ulp) * ulp
}

// scaledPow4 returns c_b = k·4^-b for b > 0 (c_0 = 1), capped at 1: each bit
// quarters the error, k sets the error of a given width.
func scaledPow4(k float64) [MaxBits + 1]float64 {
	c := pow4Factors()
	for b := 1; b <= MaxBits; b++ {
		c[b] = math.Min(1, k*c[b])
	}
	return c
}

// scaledPaper is the rejected fitting rule for the paper schedule, kept for
// the comparison: scale the 8- and 3-bit counts by f = min(1, V/2048), where
// V = 8·Budget/(rows+cols) is the budget in bits per entry-pair counting
// codes only and 2048 is what the paper's 7B schedule spends, rounding up;
// then fill 8:⌈2f⌉,3:⌈32f⌉,2:rest in order.
func scaledPaper(p Problem) Schedule {
	den := int64(2048) * int64(p.Rows+p.Cols)
	n8 := min(2, ceilDiv(2*8*p.Budget, den))
	n3 := min(32, ceilDiv(32*8*p.Budget, den))
	var bands []band
	if n8 > 0 {
		bands = append(bands, band{8, int(n8)})
	}
	if n3 > 0 {
		bands = append(bands, band{3, int(n3)})
	}
	return Schedule{kind: kindList, bands: append(bands, band{2, rest})}
}

// TestCompareSchedules runs every schedule on synthetic spectra and checks
// the orderings the design promises; with -v it prints the relative errors
// sqrt(SqErr / Σ s²) that the package report quotes.
func TestCompareSchedules(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 42))
	models := []struct {
		name string
		c    [MaxBits + 1]float64
	}{
		{"4^-b", scaledPow4(1)},
		{"4.5*4^-b", scaledPow4(4.5)},
		{"rtn-gauss", rtnFactors(rng)},
	}
	t.Logf("model factors c_b, b = 0..8:")
	for _, m := range models {
		t.Logf("  %-9s %.3g", m.name, m.c[:])
	}
	shapes := []struct {
		rows, cols int
		ratio      float64
	}{
		{384, 384, 16}, {1024, 384, 16}, {128, 384, 32}, {4096, 4096, 16}, {4096, 11008, 16}, {1024, 4096, 32},
	}
	schedules := []string{"auto", "auto:8,4,3,2", "auto:8,3,2", "auto:8,7,6,5,4,3,2,1", "greedy", "greedy:8,4,3,2",
		"paper", "scaled-paper", "2:rest", "8:rest"}
	var header strings.Builder
	fmt.Fprintf(&header, "%-22s %-9s", "shape/spectrum", "model")
	for _, s := range schedules {
		fmt.Fprintf(&header, " %9.9s", s)
	}
	t.Log(header.String())
	for _, sh := range shapes {
		for _, alpha := range []float64{0.5, 1} {
			r := min(sh.rows, sh.cols)
			sigma := powerSpectrum(r, alpha, 1)
			total := 0.0
			for _, s := range sigma {
				total += s * s
			}
			for _, m := range models {
				p := Problem{Rows: sh.rows, Cols: sh.cols, Budget: fp16Budget(sh.rows, sh.cols, sh.ratio),
					Sigma: sigma, Err: factorModel(sigma, m.c)}
				var row strings.Builder
				fmt.Fprintf(&row, "%-22s %-9s", fmt.Sprintf("%dx%d@%g s=i^-%g", sh.rows, sh.cols, sh.ratio, alpha), m.name)
				got := map[string]Plan{}
				for _, s := range schedules {
					sch := scaledPaper(p)
					if s != "scaled-paper" {
						sch = mustParse(t, s)
					}
					plan := sch.Plan(p)
					checkPlan(t, p, plan)
					got[s] = plan
					fmt.Fprintf(&row, " %9.4f", math.Sqrt(plan.SqErr/total))
				}
				t.Log(row.String())
				auto := got["auto"].SqErr
				for _, s := range []string{"greedy", "paper", "scaled-paper", "2:rest", "8:rest", "auto:8,4,3,2", "auto:8,3,2"} {
					assert.LessOrEqual(t, auto, got[s].SqErr*(1+errRelTol), "%s: auto vs %s", row.String()[:32], s)
				}
				assert.LessOrEqual(t, got["auto:8,7,6,5,4,3,2,1"].SqErr, auto*(1+errRelTol))
				assert.LessOrEqual(t, got["auto:8,4,3,2"].SqErr, got["greedy:8,4,3,2"].SqErr)
			}
		}
	}
}
