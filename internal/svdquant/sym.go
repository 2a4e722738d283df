package svdquant

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/par"
	"github.com/deltacome/deltacome/internal/quant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// DefaultRefit is the number of alternating least-squares rounds compress
// runs by default: none. A round lowers the error at equal bytes on every
// pair measured (docs/FIDELITY.md), but its k x r and k x k products over
// both sides add about a third to compress's CPU time on 7B-sized matrices,
// a compress-time regression the default must not have (issue #14): the
// refit is asked for with --refit.
const DefaultRefit = 0

// MaxRefit bounds Options.Refit: rounds past a few gain nothing measurable.
const MaxRefit = 10

// SymFactors are the stored blobs of a lowrank-sym tensor, as raw
// little-endian bytes: UCodes and VCodes the bit-packed codes of all kept u
// (length rows) and v (length cols) vectors back to back, as in Factors;
// UScales and VScales one bf16 half step per group, group by group, vector
// by vector. The singular values are in UScales.
type SymFactors struct {
	UCodes, UScales, VCodes, VScales []byte
}

// EncodedSym is the result of EncodeSym: the blobs and the manifest record.
type EncodedSym struct {
	SymFactors
	Record archive.LowRankSym
}

// SVDRankSym is SVDRank for the symmetric layout (alloc.CostSym; g = 0:
// one group per vector).
func SVDRankSym(rows, cols, g int, budget int64) int {
	return maxPairs(min(rows, cols), func(n int) int64 { return alloc.CostSym(rows, cols, g, twoBits(n)) }, budget)
}

// EncodeSym compresses delta (row-major rows x cols) within
// Budget(rows, cols, opt.Ratio) bytes as kind lowrank-sym: Encode's
// truncated SVD and allocation, the bytes counted by alloc.CostSym, each
// vector quantized on its own symmetric grid (quant.QuantizeSym, groups of
// opt.GroupSize, 0 meaning the whole vector) with the singular value folded
// into u's scales, then opt.Refit rounds of alternating least squares
// (refit), keeping the round of least error. With opt.Calibration it then
// runs the calibrated encode (calibrate) at the same widths and keeps the
// result of lower H-weighted error.
func EncodeSym(delta []float32, rows, cols int, opt Options) (*EncodedSym, error) {
	return EncodeSymMatrix(&linalg.Dense{Data: delta, Rows: rows, Cols: cols}, opt)
}

// EncodeSymMatrix is EncodeSym for a delta read through a linalg.Matrix,
// streamed as EncodeMatrix streams it: the same bits as EncodeSym for the
// same entries.
func EncodeSymMatrix(delta linalg.Matrix, opt Options) (*EncodedSym, error) {
	if opt.GroupSize < 0 || opt.Refit < 0 || opt.Refit > MaxRefit {
		return nil, fmt.Errorf("group size %d or refit rounds %d out of range", opt.GroupSize, opt.Refit)
	}
	delta, err := wholeUnlessStreamed(delta)
	if err != nil {
		return nil, err
	}
	e := &EncodedSym{}
	p, err := planPairs(delta, opt, true, &e.Record.LowRank)
	if err != nil || p == nil {
		return e, err
	}
	if len(p.bits) == 0 {
		e.Record.RelError = 1
		return e, nil
	}
	rf := &refitter{svd: p.svd, bits: p.bits, g: opt.GroupSize, workers: opt.Workers, keep: opt.Calibration != nil}
	u, v, round := rf.run(opt.Refit)
	e.Record.Refit, e.Record.RefitRound = opt.Refit, round
	if opt.Calibration != nil {
		if u, v, err = calibrate(delta, p.svd, p.bits, opt.GroupSize, opt.Workers, opt.Calibration, u, v, &e.Record); err != nil {
			return nil, err
		}
	}
	e.SymFactors = assemble(u, v, p.bits)
	errSq, err := decodedResidualSq(delta, len(p.bits), u.deq, v.deq)
	if err != nil {
		return nil, err
	}
	e.Record.RelError = math.Sqrt(errSq / p.normSq)
	return e, nil
}

// side is the quantized vectors of one side (u or v) of the kept pairs:
// codes and scales per vector, and the dequantized vectors back to back
// (row-major k x n).
type side struct {
	n      int
	codes  [][]uint8
	scales [][]uint16
	deq    []float32
}

// quantizeSide quantizes the k vectors of x (row-major k x n) at their
// widths on symmetric grids of group g, on up to workers goroutines; each
// vector is independent, so the result does not depend on the schedule.
//
// With inPlace the dequantized vectors overwrite x (each vector is read
// whole before its own values are written): the memory of a second copy of
// the factors is spared where x is not needed afterwards.
func quantizeSide(x []float32, n int, bits []int, g, workers int, inPlace bool) *side {
	k := len(bits)
	s := &side{n: n, codes: make([][]uint8, k), scales: make([][]uint16, k)}
	if inPlace {
		s.deq = x[:k*n]
	} else {
		s.deq = make([]float32, k*n)
	}
	par.For(k, workers, func() struct{} { return struct{}{} }, func(_ struct{}, j int) {
		xj := x[j*n : (j+1)*n]
		s.codes[j] = make([]uint8, n)
		s.scales[j] = make([]uint16, quant.SymGroups(n, g))
		quant.QuantizeSym(xj, bits[j], g, s.codes[j], s.scales[j])
		quant.DequantizeSym(s.deq[j*n:(j+1)*n], s.codes[j], s.scales[j], bits[j], g)
	})
	return s
}

// assemble packs the two sides into the stored blobs.
func assemble(u, v *side, bits []int) SymFactors {
	var f SymFactors
	var uw, vw quant.BitWriter
	for j, b := range bits {
		uw.WriteCodes(u.codes[j], b)
		vw.WriteCodes(v.codes[j], b)
		for _, s := range u.scales[j] {
			f.UScales = binary.LittleEndian.AppendUint16(f.UScales, s)
		}
		for _, s := range v.scales[j] {
			f.VScales = binary.LittleEndian.AppendUint16(f.VScales, s)
		}
	}
	f.UCodes, f.VCodes = uw.Bytes(), vw.Bytes()
	return f
}

// refitter runs the alternating least-squares refit of the quantized
// factors (issue #13, item 2), data-free and in the span of the SVD: with
// T = Σ_a s_a u_a v_aᵀ over the SVD's r pairs (r ≥ k, the kept pairs), a
// round fixes the quantized V_q (k x cols) and solves
//
//	min_A |T - Aᵀ V_q|_F   →   A = (V_q V_qᵀ)⁻¹ (V_q Vᵀ) diag(s) U
//
// (k x k normal equations; U and V row-major r x rows and r x cols), then
// quantizes A into U_q, and does the same for V against U_q. Every product
// is r or k wide: no rows x cols product, so a round costs about
// 2(rows+cols)·k·(2r+k) flops against the SVD's several passes over the
// matrix. The error of each round, |T - U_qᵀ V_q|_F², is computed from the
// same k x r and k x k products; the round of least error is kept (round 0
// is the SVD's vectors quantized), so a refit is never worse in T's norm.
type refitter struct {
	svd     *linalg.SVD
	bits    []int
	g       int
	workers int
	// keep leaves the SVD's factors as they are (calibrate reads them
	// after run).
	keep bool
}

// stats are the products of one quantized side with the SVD's basis of
// that side: c = Q·Bᵀ (k x r) and gram = Q·Qᵀ (k x k).
type stats struct {
	c, gram []float32
}

func (rf *refitter) stats(q *side, basis []float32) stats {
	k, r, n := len(rf.bits), rf.svd.Rank, q.n
	st := stats{c: make([]float32, k*r), gram: make([]float32, k*k)}
	linalg.MulBT(st.c, q.deq, basis, k, n, r)
	linalg.Gram(st.gram, q.deq, k, n)
	return st
}

// solve returns the least-squares factor (row-major k x n) for the other
// side's stats st, against the basis (r x n) of this side, or false when
// the other side's Gram matrix is singular.
func (rf *refitter) solve(st stats, basis []float32, n int) ([]float32, bool) {
	k, r := len(rf.bits), rf.svd.Rank
	g := make([]float64, k*k)
	for i, v := range st.gram {
		g[i] = float64(v)
	}
	w := make([]float64, k*r) // (Q Bᵀ) diag(s)
	for i := range k {
		for a := range r {
			w[i*r+a] = float64(st.c[i*r+a]) * float64(rf.svd.S[a])
		}
	}
	if !linalg.SolveSPD(g, k, w, r) {
		return nil, false
	}
	w32 := make([]float32, k*r)
	for i, v := range w {
		w32[i] = float32(v)
		if v-v != 0 {
			return nil, false
		}
	}
	x := make([]float32, k*n)
	linalg.Mul(x, w32, basis, k, r, n)
	return x, true
}

// sqErr returns |T - U_qᵀ V_q|_F² from both sides' stats.
func (rf *refitter) sqErr(su, sv stats) float64 {
	k, r := len(rf.bits), rf.svd.Rank
	var t, cross, self float64
	for a := range r {
		s := float64(rf.svd.S[a])
		t += s * s
	}
	for i := range k {
		for a := range r {
			cross += float64(rf.svd.S[a]) * float64(su.c[i*r+a]) * float64(sv.c[i*r+a])
		}
		for j := range k {
			self += float64(su.gram[i*k+j]) * float64(sv.gram[i*k+j])
		}
	}
	return t - 2*cross + self
}

// run quantizes the kept pairs (u scaled by its singular value), refits
// them for rounds rounds and returns the sides of least error and the
// round they come from.
func (rf *refitter) run(rounds int) (u, v *side, round int) {
	svd, k := rf.svd, len(rf.bits)
	// Without a refit the SVD's factors are not read again: U·S and V are
	// quantized in place, and a 70B-class projection holds one copy of its
	// factors instead of two.
	inPlace := rounds == 0 && !rf.keep
	us := svd.U[:k*svd.Rows]
	if !inPlace {
		us = make([]float32, k*svd.Rows)
	}
	for j := range k {
		src, s := svd.LeftVec(j), svd.S[j]
		for i, x := range src {
			us[j*svd.Rows+i] = x * s
		}
	}
	u = quantizeSide(us, svd.Rows, rf.bits, rf.g, rf.workers, inPlace)
	v = quantizeSide(svd.V[:k*svd.Cols], svd.Cols, rf.bits, rf.g, rf.workers, inPlace)
	if inPlace {
		return u, v, 0
	}
	su, sv := rf.stats(u, svd.U), rf.stats(v, svd.V)
	best := rf.sqErr(su, sv)
	cu, cv := u, v
	for r := 1; r <= rounds; r++ {
		a, ok := rf.solve(sv, svd.U, svd.Rows)
		if !ok {
			break
		}
		cu = quantizeSide(a, svd.Rows, rf.bits, rf.g, rf.workers, false)
		su = rf.stats(cu, svd.U)
		b, ok := rf.solve(su, svd.V, svd.Cols)
		if !ok {
			break
		}
		cv = quantizeSide(b, svd.Cols, rf.bits, rf.g, rf.workers, false)
		sv = rf.stats(cv, svd.V)
		if e := rf.sqErr(su, sv); e < best {
			best, u, v, round = e, cu, cv, r
		}
	}
	return u, v, round
}

// widths expands a record's bands into the width of each of its rank
// vectors and the bit offset of each vector's codes in a stream of vectors
// of one element (starts[rank]: the sum of all widths).
func widths(b []archive.Band, rank int) (bitsOf, starts []int, err error) {
	bitsOf = make([]int, 0, rank)
	for _, band := range b {
		for range band.Count {
			if len(bitsOf) == rank {
				return nil, nil, fmt.Errorf("%w: bands hold more than rank %d vectors", archive.ErrFormat, rank)
			}
			bitsOf = append(bitsOf, band.Bits)
		}
	}
	if len(bitsOf) != rank {
		return nil, nil, fmt.Errorf("%w: bands hold %d vectors, rank is %d", archive.ErrFormat, len(bitsOf), rank)
	}
	starts = make([]int, rank+1)
	for j, w := range bitsOf {
		if w < 1 || w > quant.MaxBits {
			return nil, nil, fmt.Errorf("%w: width %d out of range", archive.ErrFormat, w)
		}
		starts[j+1] = starts[j] + w
	}
	return bitsOf, starts, nil
}

// decode checks f against rec and returns U_q (row-major rank x rows, the
// singular values included) and V_q (row-major rank x cols).
func (f *SymFactors) decode(rows, cols int, rec *archive.LowRankSym) (ust, vt []float32, err error) {
	if rec == nil {
		return nil, nil, fmt.Errorf("%w: lowrank_sym record missing", archive.ErrFormat)
	}
	r, g := rec.Rank, rec.GroupSize
	if r < 0 || r > min(rows, cols) || g < 0 {
		return nil, nil, fmt.Errorf("%w: rank %d or group size %d out of range for %dx%d", archive.ErrFormat, r, g, rows, cols)
	}
	bitsOf, starts, err := widths(rec.Bands, r)
	if err != nil {
		return nil, nil, err
	}
	ngu, ngv := quant.SymGroups(rows, g), quant.SymGroups(cols, g)
	switch {
	case len(f.UCodes) != packedLen(rows, starts[r]) || len(f.VCodes) != packedLen(cols, starts[r]):
		return nil, nil, fmt.Errorf("%w: code blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UCodes), len(f.VCodes), packedLen(rows, starts[r]), packedLen(cols, starts[r]))
	case len(f.UScales) != 2*ngu*r || len(f.VScales) != 2*ngv*r:
		return nil, nil, fmt.Errorf("%w: scale blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UScales), len(f.VScales), 2*ngu*r, 2*ngv*r)
	}
	ust, vt = make([]float32, r*rows), make([]float32, r*cols)
	errs := make([]error, r)
	par.For(r, 0, func() *roundTripper { return new(roundTripper) }, func(w *roundTripper, j int) {
		if err := w.dequantizeSym(ust[j*rows:(j+1)*rows], f.UCodes, rows*starts[j], f.UScales[2*ngu*j:2*ngu*(j+1)], bitsOf[j], g); err != nil {
			errs[j] = fmt.Errorf("u %d: %w", j, err)
			return
		}
		if err := w.dequantizeSym(vt[j*cols:(j+1)*cols], f.VCodes, cols*starts[j], f.VScales[2*ngv*j:2*ngv*(j+1)], bitsOf[j], g); err != nil {
			errs[j] = fmt.Errorf("v %d: %w", j, err)
		}
	})
	for _, err := range errs { // the first vector's error, as a serial decode would report
		if err != nil {
			return nil, nil, err
		}
	}
	return ust, vt, nil
}

// dequantizeSym decodes into dst the codes that start at bit pos of codes,
// with the bf16 half steps in scales, using w's buffers.
func (w *roundTripper) dequantizeSym(dst []float32, codes []byte, pos int, scales []byte, bits, g int) error {
	c := grow(&w.codes[0], len(dst))
	var br quant.BitReader
	br.Reset(codes)
	br.Seek(pos)
	if err := br.ReadCodes(c, bits); err != nil {
		return fmt.Errorf("%w: codes: %v", archive.ErrFormat, err)
	}
	s := grow(&w.scales[0], len(scales)/2)
	for k := range s {
		s[k] = binary.LittleEndian.Uint16(scales[2*k:])
		if v := dtype.Float32FromBF16(s[k]); v-v != 0 {
			return fmt.Errorf("%w: non-finite scale", archive.ErrFormat)
		}
	}
	quant.DequantizeSym(dst, c, s, bits, g)
	for _, v := range dst {
		if v-v != 0 { // a finite scale times 255 can overflow float32
			return fmt.Errorf("%w: scale overflows float32", archive.ErrFormat)
		}
	}
	return nil
}

// Product decodes f and returns Delta_hat = U_qᵀ V_q, row-major rows x
// cols. Malformed blobs give errors wrapping archive.ErrFormat.
func (f *SymFactors) Product(rows, cols int, rec *archive.LowRankSym) ([]float32, error) {
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return nil, err
	}
	out := make([]float32, rows*cols)
	linalg.MulT(out, ust, rows, vt, rows, rec.Rank, cols, false)
	return out, nil
}

// ApplySym is Apply for kind lowrank-sym: it writes base + U_qᵀ V_q into
// dst, encoded as dt.
func ApplySym(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols int, rec *archive.LowRankSym, f *SymFactors) error {
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return err
	}
	return applyDecoded(dst, dt, base, baseDT, rows, cols, rec.Rank, ust, vt)
}

// PairNorms decodes f and returns |u_j|·|v_j| for each stored pair j: the
// magnitude of its rank-1 term, which is its singular value up to
// quantization (lowrank-sym stores no singular values of its own).
// Malformed blobs give errors wrapping archive.ErrFormat.
func (f *SymFactors) PairNorms(rows, cols int, rec *archive.LowRankSym) ([]float64, error) {
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return nil, err
	}
	out := make([]float64, rec.Rank)
	for j := range out {
		out[j] = math.Sqrt(sumSq(ust[j*rows:(j+1)*rows]) * sumSq(vt[j*cols:(j+1)*cols]))
	}
	return out, nil
}
