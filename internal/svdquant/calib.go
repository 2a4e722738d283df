package svdquant

import (
	"fmt"
	"math"

	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/par"
	"github.com/deltacome/deltacome/internal/quant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Calibration is the input statistics of one projection: H = XᵀX, the Gram
// matrix of the inputs X (tokens x cols) the projection saw on calibration
// text, row-major cols x cols with both triangles filled. The output error
// of an approximation Delta_hat is then tr(E H Eᵀ), E = Delta - Delta_hat.
// EncodeSym reads H and does not keep it.
type Calibration struct {
	H []float32
}

// Values of archive.LowRankSym.Calibration: which result a calibrated
// encode kept.
const (
	// CalibKept: the calibrated factors had the lower H-weighted error.
	CalibKept = "calibrated"
	// CalibDataFree: the data-free factors had the lower H-weighted error
	// and were kept.
	CalibDataFree = "data-free"
	// CalibUnusable: H (dampened) or Qv H Qvᵀ was not numerically positive
	// definite; the data-free factors were kept.
	CalibUnusable = "unusable"
)

// Dampening and blocking of the GPTQ steps (Frantar et al., arXiv
// 2210.17323). dampFrac is GPTQ's default percdamp: 1% of the mean
// diagonal is added to the diagonal before inverting, which keeps the
// Cholesky factor of H⁻¹ finite for inputs that never vary (a zero row and
// column of H). gptqBlock is GPTQ's lazy-batch block: the columns of a
// block are rounded one by one, the columns after it updated once per
// block by one product; the block is fixed, so the result does not depend
// on the machine.
const (
	dampFrac  = 0.01
	gptqBlock = 128
)

// calibrate runs the calibrated encode of the kept pairs (docs/CALIBRATION.md)
// beside the data-free sides u, v: GPTQ on V with H, with each vector's
// grid (width and scale) from the data-free clip search on the SVD's
// vector; the least-squares refit of A = U·S under H,
//
//	A = Delta H Qvᵀ (Qv H Qvᵀ)⁻¹,
//
// and GPTQ on A's vectors with the weight Qv H Qvᵀ. It returns the sides of
// least H-weighted error, tr(E H Eᵀ), and fills rec's calibration fields.
// delta is read in blocks of rows, three passes.
func calibrate(delta linalg.Matrix, svd *linalg.SVD, bits []int, g, workers int, c *Calibration, u, v *side, rec *archive.LowRankSym) (*side, *side, error) {
	rows, cols := delta.Dims()
	k := len(bits)
	if len(c.H) != cols*cols {
		return nil, nil, fmt.Errorf("calibration: H has %d values, want %d x %d", len(c.H), cols, cols)
	}
	c0, err := hNormSq(delta, c.H)
	if err != nil {
		return nil, nil, err
	}
	rec.Calibration = CalibUnusable
	if !(c0 > 0) {
		return u, v, nil
	}
	pt, gv, err := hProducts(delta, c.H, v.deq, k)
	if err != nil {
		return nil, nil, err
	}
	errFree := hErrSq(c0, u.deq, rows, pt, gv, k)
	rec.HRelErrorDataFree = math.Sqrt(max(errFree, 0) / c0)
	rec.HRelError = rec.HRelErrorDataFree

	// 1. GPTQ on V: the rows of V (k x cols), each on its own grid.
	rinv, ok := dampedInvChol(c.H, cols)
	if !ok {
		return u, v, nil
	}
	cv := gptqV(svd.V[:k*cols], cols, bits, g, workers, rinv)
	rinv = nil
	// 2. A = Delta H Qvᵀ (Qv H Qvᵀ)⁻¹, as Aᵀ = G⁻¹ Pᵀ (k x rows).
	pt, gv, err = hProducts(delta, c.H, cv.deq, k)
	if err != nil {
		return nil, nil, err
	}
	at, g64 := make([]float64, k*rows), make([]float64, k*k)
	if !refitA(at, g64, pt, gv, k) {
		return u, v, nil
	}
	// 3. GPTQ on A: vector by vector, the error of each propagated to the
	// vectors not yet quantized through the Cholesky factor of G⁻¹.
	for i, x := range gv {
		g64[i] = float64(x)
	}
	if !dampInvChol64(g64, k) {
		return u, v, nil
	}
	cu, ok := gptqA(at, rows, bits, g, workers, g64)
	if !ok {
		return u, v, nil
	}
	errCal := hErrSq(c0, cu.deq, rows, pt, gv, k)
	rec.Calibration = CalibDataFree
	if errCal < errFree {
		rec.Calibration, rec.HRelError = CalibKept, math.Sqrt(max(errCal, 0)/c0)
		return cu, cv, nil
	}
	return u, v, nil
}

// refitA solves G·Aᵀ = Pᵀ into at (k x rows), g64 its k x k scratch.
// Qv's rows can be nearly dependent (two 1-bit vectors), making G singular
// in float32: the solve is then retried on G + λI, λ = dampFrac times G's
// mean diagonal, a ridge least squares. It reports false when both fail.
func refitA(at, g64 []float64, pt, gv []float32, k int) bool {
	for _, damp := range []float64{0, dampFrac} {
		var mean float64
		for i := range k {
			mean += float64(gv[i*k+i])
		}
		mean /= float64(k)
		for i, x := range gv {
			g64[i] = float64(x)
		}
		for i := range k {
			g64[i*k+i] += damp * mean
		}
		for i, x := range pt {
			at[i] = float64(x)
		}
		if linalg.SolveSPD(g64, k, at, len(pt)/k) {
			return true
		}
	}
	return false
}

// hNormSq returns tr(Delta H Deltaᵀ), a block of rows at a time, summed in
// row order.
func hNormSq(delta linalg.Matrix, h []float32) (float64, error) {
	rows, cols := delta.Dims()
	d := make([]float32, min(blockRows, rows)*cols)
	dh := make([]float32, len(d))
	var s float64
	for r0 := 0; r0 < rows; r0 += blockRows {
		r1 := min(r0+blockRows, rows)
		n := (r1 - r0) * cols
		if err := delta.ReadRows(d[:n], r0, r1); err != nil {
			return 0, err
		}
		linalg.Mul(dh[:n], d[:n], h, r1-r0, cols, cols)
		s += dot(d[:n], dh[:n])
	}
	return s, nil
}

// hProducts returns, for the quantized right vectors vt (k x cols),
// Pᵀ = Qv H Deltaᵀ (k x rows) and G = Qv H Qvᵀ (k x k).
func hProducts(delta linalg.Matrix, h, vt []float32, k int) (pt, gv []float32, err error) {
	rows, cols := delta.Dims()
	hv := make([]float32, k*cols) // Qv H (H is symmetric)
	linalg.Mul(hv, vt, h, k, cols, cols)
	gv = make([]float32, k*k)
	linalg.MulBT(gv, hv, vt, k, cols, k)
	for i := range k { // exactly symmetric, for the Cholesky factorizations
		for j := range i {
			gv[i*k+j] = gv[j*k+i]
		}
	}
	pt = make([]float32, k*rows)
	d := make([]float32, min(blockRows, rows)*cols)
	blk := make([]float32, k*min(blockRows, rows))
	for r0 := 0; r0 < rows; r0 += blockRows {
		r1 := min(r0+blockRows, rows)
		n := r1 - r0
		if err := delta.ReadRows(d[:n*cols], r0, r1); err != nil {
			return nil, nil, err
		}
		linalg.MulBT(blk[:k*n], hv, d[:n*cols], k, cols, n)
		for i := range k {
			copy(pt[i*rows+r0:i*rows+r1], blk[i*n:(i+1)*n])
		}
	}
	return pt, gv, nil
}

// hErrSq returns tr(E H Eᵀ) for E = Delta - Aᵀ·Qv, from c0 = tr(Delta H
// Deltaᵀ), ust = Aᵀ (k x rows), and hProducts' pt and gv for Qv:
// c0 - 2 Σ_i <a_i, (Pᵀ)_i> + Σ_ij G_ij <a_i, a_j>.
func hErrSq(c0 float64, ust []float32, rows int, pt, gv []float32, k int) float64 {
	cross := dot(ust, pt)
	aa := make([]float32, k*k)
	linalg.Gram(aa, ust, k, rows)
	return c0 - 2*cross + dot(aa, gv)
}

// dampedInvChol returns the upper Cholesky factor of (H + λI)⁻¹, λ =
// dampFrac times H's mean diagonal, in float64, or false when there is
// none.
func dampedInvChol(h []float32, n int) ([]float64, bool) {
	r := make([]float64, n*n)
	for i, x := range h {
		r[i] = float64(x)
	}
	return r, dampInvChol64(r, n)
}

// dampInvChol64 is dampedInvChol in place on a float64 matrix.
func dampInvChol64(r []float64, n int) bool {
	var mean float64
	for i := range n {
		mean += r[i*n+i]
	}
	mean /= float64(n)
	if !(mean > 0) || math.IsInf(mean, 0) {
		return false
	}
	for i := range n {
		r[i*n+i] += dampFrac * mean
	}
	return linalg.InvCholUpper(r, n)
}

// gptqV quantizes the k rows of v (k x n, read only) with GPTQ's error
// feedback through rinv, the upper Cholesky factor of H⁻¹ (n x n): each
// row on its own symmetric grid of width bits[i], its scales chosen by
// quant.QuantizeSym on the row as it is (the data-free clip search). Rows
// are independent: they run on up to workers goroutines, each column block
// in fixed order, so the result does not depend on the schedule.
func gptqV(v []float32, n int, bits []int, g, workers int, rinv []float64) *side {
	k := len(bits)
	s := &side{n: n, codes: make([][]uint8, k), scales: make([][]uint16, k), deq: make([]float32, k*n)}
	w := make([]float32, k*n)
	copy(w, v)
	par.For(k, workers, func() struct{} { return struct{}{} }, func(_ struct{}, i int) {
		s.codes[i] = make([]uint8, n)
		s.scales[i] = make([]uint16, quant.SymGroups(n, g))
		quant.QuantizeSym(w[i*n:(i+1)*n], bits[i], g, s.codes[i], s.scales[i])
	})
	gs := g
	if gs == 0 {
		gs = max(n, 1)
	}
	errs := make([]float32, k*gptqBlock)
	for j0 := 0; j0 < n; j0 += gptqBlock {
		j1 := min(j0+gptqBlock, n)
		b := j1 - j0
		par.For(k, workers, func() struct{} { return struct{}{} }, func(_ struct{}, i int) {
			row, e := w[i*n:(i+1)*n], errs[i*b:(i+1)*b]
			for j := j0; j < j1; j++ {
				c, q := quant.RoundSym(row[j], s.scales[i][j/gs], bits[i])
				s.codes[i][j], s.deq[i*n+j] = c, q
				d := (float64(row[j]) - float64(q)) / rinv[j*n+j]
				e[j-j0] = float32(d)
				rj := rinv[j*n : (j+1)*n]
				for jj := j + 1; jj < j1; jj++ {
					row[jj] -= float32(d * rj[jj])
				}
			}
		})
		if j1 == n {
			break
		}
		// The columns after the block: w[:, j1:] -= E · R[j0:j1, j1:].
		rest := n - j1
		rb := make([]float32, b*rest)
		for j := j0; j < j1; j++ {
			for jj := j1; jj < n; jj++ {
				rb[(j-j0)*rest+jj-j1] = float32(rinv[j*n+jj])
			}
		}
		upd := make([]float32, k*rest)
		linalg.Mul(upd, errs[:k*b], rb, k, b, rest)
		par.For(k, workers, func() struct{} { return struct{}{} }, func(_ struct{}, i int) {
			row, ui := w[i*n+j1:(i+1)*n], upd[i*rest:(i+1)*rest]
			for jj := range row {
				row[jj] -= ui[jj]
			}
		})
	}
	return s
}

// gptqA quantizes the k vectors at (row-major k x rows, float64,
// overwritten) in order, each whole on its own grid (quant.QuantizeSym),
// the error of vector i propagated to the vectors after it through rg, the
// upper Cholesky factor of G⁻¹ (k x k): a_j -= (a_i - q_i) rg_ij / rg_ii.
// It reports false when a vector is not finite.
func gptqA(at []float64, rows int, bits []int, g, workers int, rg []float64) (*side, bool) {
	k := len(bits)
	s := &side{n: rows, codes: make([][]uint8, k), scales: make([][]uint16, k), deq: make([]float32, k*rows)}
	x := make([]float32, rows)
	d := make([]float64, rows)
	for i := range k {
		ai := at[i*rows : (i+1)*rows]
		for r, a := range ai {
			if a-a != 0 {
				return nil, false
			}
			x[r] = float32(a)
		}
		s.codes[i] = make([]uint8, rows)
		s.scales[i] = make([]uint16, quant.SymGroups(rows, g))
		quant.QuantizeSym(x, bits[i], g, s.codes[i], s.scales[i])
		q := s.deq[i*rows : (i+1)*rows]
		quant.DequantizeSym(q, s.codes[i], s.scales[i], bits[i], g)
		for r := range d {
			d[r] = (ai[r] - float64(q[r])) / rg[i*k+i]
		}
		par.For(k-i-1, workers, func() struct{} { return struct{}{} }, func(_ struct{}, t int) {
			j := i + 1 + t
			c, aj := rg[i*k+j], at[j*rows:(j+1)*rows]
			for r := range aj {
				aj[r] -= d[r] * c
			}
		})
	}
	return s, true
}

// CalibrationMemory estimates the bytes the calibrated encode of a rows x
// cols delta with opt holds beyond Memory's estimate: H expanded to
// float32 (4·cols²) and the float64 Cholesky factor of its inverse
// (8·cols²), then the k-wide products (Qv·H and Pᵀ in float32, Aᵀ in
// float64) and the calibrated factors' codes and values. H of a site of
// 11008 inputs alone is 1.4 GB this way.
func CalibrationMemory(rows, cols int, opt Options) int64 {
	m, n := int64(rows), int64(cols)
	k := int64(SVDRankSym(rows, cols, opt.GroupSize, opt.budget(rows, cols)))
	return 12*n*n + 4*k*n + 16*k*m + 5*k*(m+n)
}
