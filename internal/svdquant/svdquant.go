package svdquant

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/par"
	"github.com/deltacome/deltacome/internal/quant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// ErrNonFinite reports NaN or Inf in an input tensor, where no delta can be
// computed.
var ErrNonFinite = errors.New("non-finite value")

// Options configures Encode.
type Options struct {
	// Ratio: stored bytes <= fp16 size / Ratio (Budget); 0 means MaxBytes
	// is the budget.
	Ratio float64
	// MaxBytes is the byte budget when Ratio is 0 (a budget chosen for an
	// error target, see Curve).
	MaxBytes int64
	// Schedule allocates widths to singular vectors.
	Schedule alloc.Schedule
	// GroupSize is the quantization group length along a vector (EncodeSym:
	// 0 means one group per vector).
	GroupSize int
	// Refit is the number of alternating least-squares rounds EncodeSym
	// runs after quantizing (0: none); Encode ignores it.
	Refit int
	// Calibration, when set, makes EncodeSym also run the calibrated
	// encode with these input statistics and keep whichever result has
	// the lower H-weighted error (see calibrate); Encode ignores it.
	Calibration *Calibration
	// SVD selects the truncated SVD route (the zero value is auto: see
	// linalg.Route).
	SVD linalg.Route
	// Workers bounds the goroutines measuring and quantizing singular
	// vectors of this one matrix; < 1 means GOMAXPROCS. The result does not
	// depend on it.
	Workers int
}

// Factors are the stored blobs of a low-rank tensor, as raw little-endian
// bytes: Sigma float32[rank]; UCodes and VCodes the bit-packed codes of all
// kept u (length rows) and v (length cols) vectors back to back;
// UQParams and VQParams bf16 (scale, min) pairs, group by group, vector by
// vector.
type Factors struct {
	Sigma, UCodes, UQParams, VCodes, VQParams []byte
}

// Encoded is the result of Encode: the blobs and the manifest record.
type Encoded struct {
	Factors
	Record archive.LowRank
}

// Budget returns the byte budget of a rows x cols matrix at ratio: its fp16
// size divided by ratio, rounded down.
func Budget(rows, cols int, ratio float64) int64 {
	return int64(math.Floor(float64(rows) * float64(cols) * 2 / ratio))
}

// Delta writes ft - base, element by element in float32, into dst. It
// returns an error wrapping ErrNonFinite when either input holds NaN or Inf
// (naming the first such element of the fine-tune, else of the base), or
// when a difference overflows. It works in chunks on every core.
func Delta(dst []float32, ft []byte, ftDT safetensors.DType, base []byte, baseDT safetensors.DType) error {
	return deltaAt(dst, ft, ftDT, base, baseDT, 0)
}

// deltaAt is Delta for elements of a tensor starting at element offset,
// which its errors count from.
func deltaAt(dst []float32, ft []byte, ftDT safetensors.DType, base []byte, baseDT safetensors.DType, offset int) error {
	// Whole-length checks first, so that no chunk can fail on its own.
	if err := dtype.CheckLen(len(dst), len(ft), ftDT); err != nil {
		return fmt.Errorf("fine-tune: %w", err)
	}
	if err := dtype.CheckLen(len(dst), len(base), baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	n := (len(dst) + deltaChunk - 1) / deltaChunk
	bad := make([][3]int, n) // per chunk: first non-finite of ft, base, delta (-1: none)
	fs, bs := int(ftDT.Size()), int(baseDT.Size())
	newScratch := func() []float32 { return make([]float32, deltaChunk) }
	par.For(n, 0, newScratch, func(scratch []float32, c int) {
		lo, hi := c*deltaChunk, min((c+1)*deltaChunk, len(dst))
		d, b := dst[lo:hi], scratch[:hi-lo]
		_ = dtype.Decode(d, ft[lo*fs:hi*fs], ftDT) // lengths and dtypes checked above
		_ = dtype.Decode(b, base[lo*bs:hi*bs], baseDT)
		bad[c] = [3]int{firstNonFinite(d), firstNonFinite(b), -1}
		for i := range d {
			d[i] -= b[i]
		}
		if bad[c][0] < 0 && bad[c][1] < 0 {
			bad[c][2] = firstNonFinite(d)
		}
	})
	first := func(k int) int { // the first element flagged k, in order, or -1
		for c, bc := range bad {
			if bc[k] >= 0 {
				return c*deltaChunk + bc[k]
			}
		}
		return -1
	}
	if i := first(0); i >= 0 {
		return fmt.Errorf("%w: fine-tune element %d is %v", ErrNonFinite, offset+i, dtypeValue(ft, ftDT, i))
	}
	if i := first(1); i >= 0 {
		return fmt.Errorf("%w: base element %d is %v", ErrNonFinite, offset+i, dtypeValue(base, baseDT, i))
	}
	if i := first(2); i >= 0 {
		return fmt.Errorf("%w: delta element %d overflows float32", ErrNonFinite, offset+i)
	}
	return nil
}

// deltaChunk is the number of elements Delta converts on one goroutine at a
// time.
const deltaChunk = 1 << 16

// dtypeValue decodes element i of src, of dtype dt.
func dtypeValue(src []byte, dt safetensors.DType, i int) float32 {
	var v [1]float32
	size := int(dt.Size())
	_ = dtype.Decode(v[:], src[i*size:(i+1)*size], dt)
	return v[0]
}

func firstNonFinite(x []float32) int {
	for i, v := range x {
		if v-v != 0 { // NaN - NaN and Inf - Inf are NaN
			return i
		}
	}
	return -1
}

// Encode compresses delta (row-major rows x cols) into quantized singular
// vectors within Budget(rows, cols, opt.Ratio) bytes (Delta-CoMe, arXiv
// 2406.08903 section 3): a truncated SVD, a bit width per singular vector
// from opt.Schedule fed with the measured quantization error of each vector
// at each width, and round-to-nearest quantization of the unit vectors in
// groups, singular values kept in float32.
func Encode(delta []float32, rows, cols int, opt Options) (*Encoded, error) {
	return EncodeMatrix(&linalg.Dense{Data: delta, Rows: rows, Cols: cols}, opt)
}

// EncodeMatrix is Encode for a delta read through a linalg.Matrix, such as
// DeltaRows: a matrix that linalg.Streamed says is read in panels is never
// held whole in float32 on the randomized route (the exact route reads it
// whole). The result is Encode's for the same entries, the same bits.
// Errors are Encode's and those of reading the matrix.
func EncodeMatrix(delta linalg.Matrix, opt Options) (*Encoded, error) {
	delta, err := wholeUnlessStreamed(delta)
	if err != nil {
		return nil, err
	}
	e := &Encoded{}
	p, err := planPairs(delta, opt, false, &e.Record)
	if err != nil || p == nil {
		return e, err
	}
	e.Factors = p.m.encode(p.bits)
	normSq := p.normSq
	p = nil // the SVD and the measurer are dead: the collector may take them back
	errSq, err := residualSq(delta, &e.Factors, &e.Record)
	if err != nil {
		var de *decodeError
		if errors.As(err, &de) {
			panic(fmt.Sprintf("svdquant: decoding what was just encoded: %v", err))
		}
		return nil, err
	}
	e.Record.RelError = math.Sqrt(errSq / normSq)
	return e, nil
}

// wholeUnlessStreamed reads a matrix that linalg.Streamed does not stream
// once, whole, into a linalg.Dense, as before streaming existed: its passes
// then cost no decoding.
func wholeUnlessStreamed(delta linalg.Matrix) (linalg.Matrix, error) {
	rows, cols := delta.Dims()
	if _, ok := delta.(*linalg.Dense); ok || linalg.Streamed(rows, cols) {
		return delta, nil
	}
	a := make([]float32, rows*cols)
	if err := delta.ReadRows(a, 0, rows); err != nil {
		return nil, err
	}
	return &linalg.Dense{Data: a, Rows: rows, Cols: cols}, nil
}

// planned is a delta's truncated SVD and the widths of its kept pairs.
type planned struct {
	svd    *linalg.SVD
	m      *measurer
	bits   []int
	normSq float64
}

// planPairs takes the truncated SVD of delta and allocates widths to its
// pairs within Budget(rows, cols, opt.Ratio) bytes of the asymmetric layout
// (alloc.Cost) or, when sym, the symmetric one (alloc.CostSym), filling in
// every field of rec but RelError. It returns nil, with rec complete, when
// the delta is zero or the budget holds no pair.
func planPairs(delta linalg.Matrix, opt Options, sym bool, rec *archive.LowRank) (*planned, error) {
	rows, cols := delta.Dims()
	g := opt.GroupSize
	budget := opt.budget(rows, cols)
	normSq, err := matrixSumSq(delta)
	if err != nil {
		return nil, err
	}
	*rec = archive.LowRank{GroupSize: g, Budget: budget, DeltaNorm: math.Sqrt(normSq)}
	if normSq == 0 {
		return nil, nil
	}
	svdRank, layout := SVDRank, alloc.LayoutAsym
	if sym {
		svdRank, layout = SVDRankSym, alloc.LayoutSym
	}
	rank := svdRank(rows, cols, g, budget)
	if rank == 0 {
		rec.RelError = 1
		return nil, nil
	}
	svd, err := linalg.TruncatedMatrix(delta, rank, opt.SVD)
	if err != nil {
		return nil, fmt.Errorf("svd: %w", err)
	}
	rec.SVDFallback = svd.Fallback
	sigma := make([]float64, svd.Rank)
	for i := range sigma {
		sigma[i] = float64(svd.S[i])
	}
	m := newMeasurer(svd, g, opt.Workers)
	m.sym = sym
	plan := opt.Schedule.Plan(alloc.Problem{Rows: rows, Cols: cols, GroupSize: g, Layout: layout, Budget: budget, Sigma: sigma, Err: m.err})
	if plan.Bytes > budget {
		panic(fmt.Sprintf("svdquant: plan of %d bytes over budget %d", plan.Bytes, budget))
	}
	rec.Rank = len(plan.Bits)
	rec.Bands = bands(plan.Bits)
	var kept float64
	for i := range plan.Bits {
		kept += sigma[i] * sigma[i]
	}
	rec.EnergyKept = kept / normSq
	return &planned{svd: svd, m: m, bits: plan.Bits, normSq: normSq}, nil
}

// matrixSumSq returns the sum of squares of m's entries, accumulated in
// float64 in row-major order (the same sum whether m is read whole or in
// panels).
func matrixSumSq(m linalg.Matrix) (float64, error) {
	rows, cols := m.Dims()
	if d, ok := m.(*linalg.Dense); ok {
		return sumSq(d.Data), nil
	}
	step := linalg.PanelRows(rows, cols)
	buf := make([]float32, step*cols)
	var s float64
	for r0 := 0; r0 < rows; r0 += step {
		r1 := min(r0+step, rows)
		a := buf[:(r1-r0)*cols]
		if err := m.ReadRows(a, r0, r1); err != nil {
			return 0, err
		}
		for _, v := range a {
			s += float64(v) * float64(v)
		}
	}
	return s, nil
}

// SVDRank is the number of singular triplets Encode computes for a rows x
// cols matrix with group size g and a budget of budget bytes: the number of
// vectors the budget holds at 2 bits each (at most min(rows, cols)).
//
// A plan keeps more pairs than that only by giving some 1 bit, whose
// measured error rarely pays for its bytes: on the tiny-llama pair at ratios
// 8-32 every plan kept at most 75% of this rank. Asking for no more than the
// plans use matters at scale, where the SVD's cost grows with the rank: the
// budget holds twice as many 1-bit vectors.
func SVDRank(rows, cols, g int, budget int64) int {
	return maxPairs(min(rows, cols), func(n int) int64 { return alloc.Cost(rows, cols, g, twoBits(n)) }, budget)
}

// maxPairs returns the largest n <= limit with cost(n) <= budget, cost
// being non-decreasing in n (linear at a fixed width): by bisection.
func maxPairs(limit int, cost func(n int) int64, budget int64) int {
	lo, hi := 0, limit // cost(lo) <= budget; find the largest such lo
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if cost(mid) <= budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// twoBits returns n widths of 2 bits.
func twoBits(n int) []int {
	bits := make([]int, n)
	for i := range bits {
		bits[i] = 2
	}
	return bits
}

// bands run-length encodes a non-increasing width list.
func bands(bits []int) []archive.Band {
	var out []archive.Band
	for _, b := range bits {
		if n := len(out); n > 0 && out[n-1].Bits == b {
			out[n-1].Count++
		} else {
			out = append(out, archive.Band{Bits: b, Count: 1})
		}
	}
	return out
}

// Measurement sampling. The allocator needs the error of every pair at every
// width, and quantizing every singular vector at every width with clip
// search dominated the compression of 7B-sized matrices (thousands of pairs
// of 15k entries). The normalised error Err(i, b)/s_i² of a pair depends only
// on the shape of its vectors' entry distributions, which varies slowly with
// i past the first pairs: so the first measureAll pairs are measured
// exactly, then about measureSampled more spread evenly up to the last pair
// (always measured), and the normalised errors of the pairs between are
// interpolated linearly. Matrices with at most measureAll+measureSampled
// pairs, every matrix of the tiny-llama pair included, are measured
// exactly. The error recorded for the archive is always measured on the
// decoded result. Halving measureSampled from 192 to 96 left the aggregate
// error of the synthetic 7B layer at 0.4478 and cut its plans' time from
// 4.5 to 3.0 s (TestSampledMeasurementQuality: 0.28315 against 0.28311 with
// every pair measured).
const (
	measureAll     = 64
	measureSampled = 96
)

// measurer holds the measured error of each pair at each width, filled one
// width at a time on first use.
type measurer struct {
	svd     *linalg.SVD
	opt     quant.Options
	workers int
	// sym measures the symmetric grids of kind lowrank-sym (group size
	// opt.GroupSize, 0 meaning the whole vector) instead of Quantize's.
	sym bool
	rel [quant.MaxBits + 1][]float64 // rel[b][i] = Err(i, b) / s_i²
}

func newMeasurer(svd *linalg.SVD, g, workers int) *measurer {
	return &measurer{svd: svd, opt: quant.Options{GroupSize: g, ClipSearch: true}, workers: workers}
}

// err returns |s (u v^T - u_q v_q^T)|_F^2 for pair i at width bits. With unit
// u and v this is s^2 (1 - 2 (u.u_q)(v.v_q) + |u_q|^2 |v_q|^2), exact, with
// no rows x cols product (interpolated between measured pairs, see
// measureAll).
func (m *measurer) err(i, bits int) float64 {
	s := float64(m.svd.S[i])
	if bits == 0 {
		return s * s
	}
	if m.rel[bits] == nil {
		m.rel[bits] = m.measureWidth(bits)
	}
	return s * s * m.rel[bits][i]
}

// sampled returns the pairs measured exactly, increasing, among r.
func sampled(r int) []int {
	if r <= measureAll+measureSampled {
		idx := make([]int, r)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := make([]int, 0, measureAll+measureSampled+1)
	for i := range measureAll {
		idx = append(idx, i)
	}
	span := r - 1 - measureAll // pairs measureAll .. r-1, both ends included
	for j := range measureSampled + 1 {
		i := measureAll + j*span/measureSampled
		if i > idx[len(idx)-1] {
			idx = append(idx, i)
		}
	}
	return idx
}

// measureWidth returns the normalised error of every pair at width bits:
// measured at the sampled pairs, in parallel, interpolated between them.
func (m *measurer) measureWidth(bits int) []float64 {
	r := m.svd.Rank
	idx := sampled(r)
	got := make([]float64, len(idx))
	m.parallel(len(idx), func(w *roundTripper, j int) {
		u, v := m.vectors(idx[j])
		uq, vq := m.roundTrip(w, u, bits, 0), m.roundTrip(w, v, bits, 1)
		e := 1 - 2*dot(u, uq)*dot(v, vq) + dot(uq, uq)*dot(vq, vq)
		got[j] = max(e, 0) // rounding can dip a hair below 0 for near-exact 8-bit codes
	})
	rel := make([]float64, r)
	for j, i := range idx {
		rel[i] = got[j]
		if j == 0 {
			continue
		}
		prev := idx[j-1]
		for k := prev + 1; k < i; k++ {
			t := float64(k-prev) / float64(i-prev)
			rel[k] = (1-t)*got[j-1] + t*got[j]
		}
	}
	return rel
}

// parallel calls fn(w, j) for j in [0, n) on up to m.workers goroutines,
// each with its own scratch buffers. Items are independent, so the results
// do not depend on the schedule.
func (m *measurer) parallel(n int, fn func(w *roundTripper, j int)) {
	par.For(n, m.workers, func() *roundTripper { return new(roundTripper) }, fn)
}

// roundTripper holds one goroutine's quantization scratch buffers: slot 0
// for left vectors, slot 1 for right ones (dequantize uses slot 0).
type roundTripper struct {
	codes        [2][]uint8
	scales, mins [2][]uint16
	out          [2][]float32
}

// roundTrip quantizes x at bits on m's grid and returns the dequantized
// vector, in the slot's buffer of w (valid until the slot is used again).
func (m *measurer) roundTrip(w *roundTripper, x []float32, bits, slot int) []float32 {
	if m.sym {
		return w.roundTripSym(x, bits, m.opt.GroupSize, slot)
	}
	return w.roundTrip(x, bits, m.opt, slot)
}

// roundTripSym is roundTrip on the symmetric grid with groups of g (0: the
// whole vector).
func (w *roundTripper) roundTripSym(x []float32, bits, g, slot int) []float32 {
	codes := grow(&w.codes[slot], len(x))
	scales := grow(&w.scales[slot], quant.SymGroups(len(x), g))
	quant.QuantizeSym(x, bits, g, codes, scales)
	out := grow(&w.out[slot], len(x))
	quant.DequantizeSym(out, codes, scales, bits, g)
	return out
}

// roundTrip quantizes x at bits and returns the dequantized vector, in the
// slot's buffer (valid until the slot is used again).
func (w *roundTripper) roundTrip(x []float32, bits int, opt quant.Options, slot int) []float32 {
	codes, scales, mins := w.quantize(x, bits, opt, slot)
	out := grow(&w.out[slot], len(x))
	quant.Dequantize(out, codes, scales, mins, bits, opt.GroupSize)
	return out
}

// quantize quantizes x at bits into the slot's buffers.
func (w *roundTripper) quantize(x []float32, bits int, opt quant.Options, slot int) ([]uint8, []uint16, []uint16) {
	ng := quant.NumGroups(len(x), opt.GroupSize)
	codes := grow(&w.codes[slot], len(x))
	scales, mins := grow(&w.scales[slot], ng), grow(&w.mins[slot], ng)
	quant.Quantize(x, bits, opt, codes, scales, mins)
	return codes, scales, mins
}

// grow returns (*buf)[:n], reallocating when the capacity is short.
func grow[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	return (*buf)[:n]
}

func (m *measurer) vectors(i int) (u, v []float32) {
	return m.svd.LeftVec(i), m.svd.RightVec(i)
}

// quantized is one vector's codes and packed quantization parameters.
type quantized struct {
	codes []uint8
	qp    []byte
}

// encode quantizes the kept vectors at their widths into Factors: the
// vectors in parallel, the streams assembled in order.
func (m *measurer) encode(bits []int) Factors {
	us, vs := make([]quantized, len(bits)), make([]quantized, len(bits))
	m.parallel(len(bits), func(w *roundTripper, i int) {
		u, v := m.vectors(i)
		us[i] = w.quantized(u, bits[i], m.opt)
		vs[i] = w.quantized(v, bits[i], m.opt)
	})
	var f Factors
	var uw, vw quant.BitWriter
	for i, b := range bits {
		uw.WriteCodes(us[i].codes, b)
		vw.WriteCodes(vs[i].codes, b)
		f.UQParams = append(f.UQParams, us[i].qp...)
		f.VQParams = append(f.VQParams, vs[i].qp...)
		f.Sigma = binary.LittleEndian.AppendUint32(f.Sigma, math.Float32bits(m.svd.S[i]))
	}
	f.UCodes, f.VCodes = uw.Bytes(), vw.Bytes()
	return f
}

// quantized quantizes x at bits into a new quantized value.
func (w *roundTripper) quantized(x []float32, bits int, opt quant.Options) quantized {
	codes, scales, mins := w.quantize(x, bits, opt, 0)
	q := quantized{codes: slices.Clone(codes), qp: make([]byte, 0, 4*len(scales))}
	for j := range scales {
		q.qp = binary.LittleEndian.AppendUint16(q.qp, scales[j])
		q.qp = binary.LittleEndian.AppendUint16(q.qp, mins[j])
	}
	return q
}

// residualSq returns |delta - Delta_hat|_F^2 for the factors f, decoded as
// reconstruct decodes them, forming Delta_hat and reading delta a block of
// rows at a time. Its products and the sums of squares are cut in fixed
// blocks, summed in order: the result is the same for any number of
// workers. An error decoding f is a *decodeError; others are delta's.
func residualSq(delta linalg.Matrix, f *Factors, rec *archive.LowRank) (float64, error) {
	rows, cols := delta.Dims()
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return 0, &decodeError{err}
	}
	return decodedResidualSq(delta, rec.Rank, ust, vt)
}

// decodedResidualSq is residualSq for decoded factors: ust (rank x rows,
// the left vectors times their singular values) and vt (rank x cols).
// Its errors are delta's.
func decodedResidualSq(delta linalg.Matrix, rank int, ust, vt []float32) (float64, error) {
	rows, cols := delta.Dims()
	dense, _ := delta.(*linalg.Dense)
	hat := make([]float32, min(blockRows, rows)*cols)
	var buf []float32
	if dense == nil {
		buf = make([]float32, min(blockRows, rows)*cols)
	}
	var sum float64
	for r0 := 0; r0 < rows; r0 += blockRows {
		r1 := min(r0+blockRows, rows)
		h := hat[:(r1-r0)*cols]
		linalg.MulT(h, ust[r0:], rows, vt, r1-r0, rank, cols, false)
		var d []float32
		if dense != nil {
			d = dense.Data[r0*cols : r1*cols]
		} else {
			d = buf[:(r1-r0)*cols]
			if err := delta.ReadRows(d, r0, r1); err != nil {
				return 0, err
			}
		}
		parts := make([]float64, (len(h)+sumChunk-1)/sumChunk)
		par.Each(len(parts), func(c int) {
			var part float64
			for i := c * sumChunk; i < min((c+1)*sumChunk, len(h)); i++ {
				x := float64(d[i] - h[i])
				part += x * x
			}
			parts[c] = part
		})
		for _, p := range parts {
			sum += p
		}
	}
	return sum, nil
}

// decodeError is an error decoding factors that were just encoded: a bug.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

// sumChunk is the number of squares residualSq sums on one goroutine.
const sumChunk = 1 << 16

// blockRows is the number of rows of Delta_hat formed at a time by
// residualSq and Apply: no rows x cols float32 copy is needed, and a block
// stays in cache between its product and its use.
const blockRows = 256

// applyBlocks calls fn for consecutive blocks of at most blockRows rows
// [r0, r1) of a rows x cols matrix, on GOMAXPROCS goroutines, each with a
// scratch buffer of (r1-r0)·cols float32 values.
func applyBlocks(rows, cols int, fn func(r0, r1 int, buf []float32)) {
	newBuf := func() []float32 { return make([]float32, min(blockRows, rows)*cols) }
	par.For((rows+blockRows-1)/blockRows, 0, newBuf, func(buf []float32, b int) {
		r0, r1 := b*blockRows, min((b+1)*blockRows, rows)
		fn(r0, r1, buf[:(r1-r0)*cols])
	})
}

// Product decodes f and returns Delta_hat = U_q diag(sigma) V_q^T, row-major
// rows x cols. It checks every blob's length against rec (errors wrap
// archive.ErrFormat) and that sigma is finite.
func (f *Factors) Product(rows, cols int, rec *archive.LowRank) ([]float32, error) {
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return nil, err
	}
	out := make([]float32, rows*cols)
	linalg.MulT(out, ust, rows, vt, rows, rec.Rank, cols, false)
	return out, nil
}

// decode checks f against rec and returns (U_q diag(sigma))^T (row-major
// rank x rows: one scaled left vector per row) and V_q^T (row-major
// rank x cols).
func (f *Factors) decode(rows, cols int, rec *archive.LowRank) (ust, vt []float32, err error) {
	r, g := rec.Rank, rec.GroupSize
	if r > min(rows, cols) {
		return nil, nil, fmt.Errorf("%w: rank %d exceeds %dx%d", archive.ErrFormat, r, rows, cols)
	}
	// Vector j's codes start after those of the vectors before it, and its
	// qparams at a fixed stride: the vectors decode independently.
	bitsOf, starts, err := widths(rec.Bands, r)
	if err != nil {
		return nil, nil, err
	}
	totalBits := starts[r]
	nqu, nqv := quant.NumGroups(rows, g)*r*4, quant.NumGroups(cols, g)*r*4
	switch {
	case len(f.Sigma) != 4*r:
		return nil, nil, fmt.Errorf("%w: sigma has %d bytes, want %d", archive.ErrFormat, len(f.Sigma), 4*r)
	case len(f.UCodes) != packedLen(rows, totalBits) || len(f.VCodes) != packedLen(cols, totalBits):
		return nil, nil, fmt.Errorf("%w: code blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UCodes), len(f.VCodes), packedLen(rows, totalBits), packedLen(cols, totalBits))
	case len(f.UQParams) != nqu || len(f.VQParams) != nqv:
		return nil, nil, fmt.Errorf("%w: qparam blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UQParams), len(f.VQParams), nqu, nqv)
	}
	sigma := make([]float32, r)
	for j := range sigma {
		s := math.Float32frombits(binary.LittleEndian.Uint32(f.Sigma[4*j:]))
		if s-s != 0 {
			return nil, nil, fmt.Errorf("%w: singular value %d is %v", archive.ErrFormat, j, s)
		}
		sigma[j] = s
	}
	ust = make([]float32, r*rows)
	vt = make([]float32, r*cols)
	errs := make([]error, r)
	ngu, ngv := quant.NumGroups(rows, g), quant.NumGroups(cols, g)
	par.For(r, 0, func() *roundTripper { return new(roundTripper) }, func(w *roundTripper, j int) {
		u := ust[j*rows : (j+1)*rows]
		if err := w.dequantize(u, f.UCodes, rows*starts[j], f.UQParams[4*ngu*j:4*ngu*(j+1)], bitsOf[j], g); err != nil {
			errs[j] = err
			return
		}
		for i := range u {
			u[i] *= sigma[j]
		}
		errs[j] = w.dequantize(vt[j*cols:(j+1)*cols], f.VCodes, cols*starts[j], f.VQParams[4*ngv*j:4*ngv*(j+1)], bitsOf[j], g)
	})
	for _, err := range errs { // the first vector's error, as a serial decode would report
		if err != nil {
			return nil, nil, err
		}
	}
	return ust, vt, nil
}

// packedLen is the byte length of a code stream of vectors of n elements
// whose widths sum to sumBits.
func packedLen(n, sumBits int) int { return (n*sumBits + 7) / 8 }

// dequantize decodes into dst the codes that start at bit pos of codes,
// with the quantization parameters qp (bf16 scale and min per group), using
// w's buffers for the codes and parameters.
func (w *roundTripper) dequantize(dst []float32, codes []byte, pos int, qp []byte, bits, g int) error {
	ng := quant.NumGroups(len(dst), g)
	c := grow(&w.codes[0], len(dst))
	var br quant.BitReader
	br.Reset(codes)
	br.Seek(pos)
	if err := br.ReadCodes(c, bits); err != nil {
		return fmt.Errorf("%w: codes: %v", archive.ErrFormat, err)
	}
	scales, mins := grow(&w.scales[0], ng), grow(&w.mins[0], ng)
	for k := range ng {
		scales[k] = binary.LittleEndian.Uint16(qp[4*k:])
		mins[k] = binary.LittleEndian.Uint16(qp[4*k+2:])
		if s, mn := dtype.Float32FromBF16(scales[k]), dtype.Float32FromBF16(mins[k]); s-s != 0 || mn-mn != 0 {
			return fmt.Errorf("%w: non-finite quantization parameter", archive.ErrFormat)
		}
	}
	quant.Dequantize(dst, c, scales, mins, bits, g)
	return nil
}

// Apply writes base + Delta_hat into dst, encoded as dt (rounding to nearest
// even); at rank 0 dst is base cast to dt. base is decoded from baseDT; dst
// must hold rows x cols elements of dt.
// It works a block of rows at a time on every core, so that no rows x cols
// float32 copy is needed.
func Apply(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols int, rec *archive.LowRank, f *Factors) error {
	if rec == nil {
		return fmt.Errorf("%w: low-rank record missing", archive.ErrFormat)
	}
	ust, vt, err := f.decode(rows, cols, rec)
	if err != nil {
		return err
	}
	return applyDecoded(dst, dt, base, baseDT, rows, cols, rec.Rank, ust, vt)
}

// applyDecoded is Apply for decoded factors: ust (rank x rows, the left
// vectors times their singular values) and vt (rank x cols).
func applyDecoded(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols, rank int, ust, vt []float32) error {
	if err := dtype.CheckLen(rows*cols, len(base), baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	if err := dtype.CheckLen(rows*cols, len(dst), dt); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	inSize, outSize := int(baseDT.Size()), int(dt.Size())
	applyBlocks(rows, cols, func(r0, r1 int, w []float32) {
		_ = dtype.Decode(w, base[r0*cols*inSize:r1*cols*inSize], baseDT) // dtypes and lengths checked above
		// At rank 0 the result is the base itself, -0 included.
		if rank > 0 {
			linalg.MulT(w, ust[r0:], rows, vt, r1-r0, rank, cols, true)
		}
		_ = dtype.Encode(dst[r0*cols*outSize:r1*cols*outSize], w, dt)
	})
	return nil
}

func sumSq(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s
}

func dot(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// WorkingSetBytes estimates the peak memory Encode and its SVD use for one
// rows x cols delta, besides the delta itself, at any ratio: 8 bytes per
// element of the matrix, the allocator's slack included (under 300 MB of
// buffers for 4096 x 11008 at ratio 16). Memory is the estimate for given
// options.
func WorkingSetBytes(rows, cols int) int64 {
	return 8 * int64(rows) * int64(cols)
}

// Memory estimates the peak bytes EncodeMatrix holds for a rows x cols
// delta read from checkpoints of elemBytes bytes per element (fine-tune
// and base together, 4 for two bf16 tensors) with opt: the float32 delta
// when it is read whole (else the panels the randomized route reads and
// the checkpoint pages they keep mapped), and the largest of the route's
// steps: the Gram matrix and the Krylov basis, the Rayleigh–Ritz problem
// and its eigensolver's workspace, the factors, and the residual's decoded
// factors. The estimate counts buffers, not the collector's headroom.
//
// sym is EncodeSymMatrix's estimate: its rank (SVDRankSym), and with a
// refit (opt.Refit > 0) the dequantized vectors it holds beside the
// factors (without one it quantizes the factors in place).
func Memory(rows, cols, elemBytes int, opt Options, sym bool) int64 {
	m, n := int64(rows), int64(cols)
	short, long := min(m, n), max(m, n)
	svdRank := SVDRank
	if sym {
		svdRank = SVDRankSym
	}
	k := int64(svdRank(rows, cols, opt.GroupSize, Budget(rows, cols, opt.Ratio)))
	factors := 4 * k * (m + n) // U and V in float32
	codes := k * (m + n)       // unpacked codes of the kept vectors, at most
	var held, steps int64      // held through every step; the largest step
	if linalg.Streamed(rows, cols) {
		step := int64(linalg.PanelRows(rows, cols))
		panel := step * n * (4 + int64(elemBytes)) // decoded, and its mapped pages
		panels := panel
		if rows <= cols {
			panels = 2 * panel // the wide Gram matrix pairs two panels
		}
		held = 0
		steps = 4*short*short + panels
	} else {
		held = 4 * m * n
	}
	switch opt.SVD.Resolve(rows, cols) {
	case linalg.RouteExact:
		// A float64 copy, the float64 Gram matrix and eigenvectors, the
		// recovered vectors in float64, then the float32 factors.
		steps = max(steps, 8*m*n+8*short*short+8*short*k+8*k*long+factors)
	default:
		opts := linalg.DefaultRandomized()
		p := (k + 1) / 2
		d := int64(opts.Depth)
		b := (k + p + d - 1) / d
		l := b * d
		gram := 4 * short * short
		switch {
		case l >= short && !linalg.Streamed(rows, cols):
			steps = max(steps, 8*m*n+8*short*short+8*short*k+8*k*long+factors)
		case l >= short:
			// The Gram matrix, ssyevd's workspace (1 + 6n + 2n² floats)
			// and the eigenvectors; then the left and right vectors.
			steps = max(steps, gram+4*(1+6*short+2*short*short)+4*short*k, factors+step32(rows, cols))
		default:
			krylov := gram + 8*short*l + 16*short*b + 4*l*b
			ritz := 8*short*l + 4*l*l + 4*(1+6*l+2*l*l) + 4*l*k
			steps = max(steps, krylov, ritz, factors+step32(rows, cols))
		}
	}
	// Quantizing holds the factors and the codes; the residual the codes,
	// the decoded factors and two blocks of rows.
	quantized := factors + codes
	if sym && opt.Refit > 0 {
		quantized += factors // the dequantized u and v beside the factors
	}
	steps = max(steps, quantized, quantized+2*4*int64(min(blockRows, rows))*n)
	return held + steps
}

// step32 is the float32 panel the right vectors' product reads, for a
// streamed matrix (0 for one read whole, counted as held).
func step32(rows, cols int) int64 {
	if !linalg.Streamed(rows, cols) {
		return 0
	}
	return int64(linalg.PanelRows(rows, cols)) * int64(cols) * 4
}
