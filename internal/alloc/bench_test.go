package alloc

import (
	"fmt"
	"testing"
)

// BenchmarkPlan times each schedule on a ladder of shapes up to r = 4096
// pairs with six widths, the largest auto must handle per matrix. Err is a
// table lookup, so the time is the allocator's own. Under -short only the
// two smallest shapes run.
func BenchmarkPlan(b *testing.B) {
	ladder := []struct {
		rows, cols int
		ratio      float64
	}{
		{384, 384, 16},
		{1024, 384, 16},
		{4096, 4096, 16},
		{4096, 11008, 16},
		{4096, 4096, 8},
	}
	for n, sh := range ladder {
		r := min(sh.rows, sh.cols)
		sigma := powerSpectrum(r, 0.5, 1)
		p := Problem{Rows: sh.rows, Cols: sh.cols, Budget: fp16Budget(sh.rows, sh.cols, sh.ratio),
			Sigma: sigma, Err: factorModel(sigma, scaledPow4(4.5))}
		for _, s := range []string{"auto", "auto:8,7,6,5,4,3,2,1", "greedy", "paper"} {
			sch := mustParse(b, s)
			b.Run(fmt.Sprintf("%dx%d@%g_r%d/%s", sh.rows, sh.cols, sh.ratio, r, s), func(b *testing.B) {
				if n >= 2 && testing.Short() {
					b.Skip("large shape skipped under -short")
				}
				for b.Loop() {
					sch.Plan(p)
				}
			})
		}
	}
}
