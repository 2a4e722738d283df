package lowrank

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/nlpodyssey/safetensors"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/quant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// ErrNonFinite reports NaN or Inf in an input tensor, where no delta can be
// computed.
var ErrNonFinite = errors.New("non-finite value")

// Options configures Encode.
type Options struct {
	// Ratio: stored bytes <= fp16 size / Ratio (Budget).
	Ratio float64
	// Schedule allocates widths to singular vectors.
	Schedule alloc.Schedule
	// GroupSize is the quantization group length along a vector.
	GroupSize int
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
// returns an error wrapping ErrNonFinite when either input holds NaN or Inf.
func Delta(dst []float32, ft []byte, ftDT safetensors.DType, base []byte, baseDT safetensors.DType) error {
	if err := dtype.Decode(dst, ft, ftDT); err != nil {
		return fmt.Errorf("fine-tune: %w", err)
	}
	if i := firstNonFinite(dst); i >= 0 {
		return fmt.Errorf("%w: fine-tune element %d is %v", ErrNonFinite, i, dst[i])
	}
	b := make([]float32, len(dst))
	if err := dtype.Decode(b, base, baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	if i := firstNonFinite(b); i >= 0 {
		return fmt.Errorf("%w: base element %d is %v", ErrNonFinite, i, b[i])
	}
	for i := range dst {
		dst[i] -= b[i]
	}
	if i := firstNonFinite(dst); i >= 0 {
		return fmt.Errorf("%w: delta element %d overflows float32", ErrNonFinite, i)
	}
	return nil
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
	g := opt.GroupSize
	budget := Budget(rows, cols, opt.Ratio)
	normSq := sumSq(delta)
	e := &Encoded{Record: archive.LowRank{GroupSize: g, Budget: budget, DeltaNorm: math.Sqrt(normSq)}}
	if normSq == 0 {
		return e, nil
	}
	rmax := maxRank(rows, cols, g, budget)
	if rmax == 0 {
		e.Record.RelError = 1
		return e, nil
	}
	svd, err := linalg.Exact(delta, rows, cols, rmax)
	if err != nil {
		return nil, fmt.Errorf("svd: %w", err)
	}
	sigma := make([]float64, svd.Rank)
	for i := range sigma {
		sigma[i] = float64(svd.S[i])
	}
	m := newMeasurer(svd, g)
	plan := opt.Schedule.Plan(alloc.Problem{Rows: rows, Cols: cols, GroupSize: g, Budget: budget, Sigma: sigma, Err: m.err})
	if plan.Bytes > budget {
		panic(fmt.Sprintf("lowrank: plan of %d bytes over budget %d", plan.Bytes, budget))
	}
	e.Factors = m.encode(plan.Bits)
	e.Record.Rank = len(plan.Bits)
	e.Record.Bands = bands(plan.Bits)
	var kept float64
	for i := range plan.Bits {
		kept += sigma[i] * sigma[i]
	}
	e.Record.EnergyKept = kept / normSq

	hat, err := e.Factors.Product(rows, cols, &e.Record)
	if err != nil {
		panic(fmt.Sprintf("lowrank: decoding what was just encoded: %v", err))
	}
	var errSq float64
	for i, d := range delta {
		r := float64(d - hat[i])
		errSq += r * r
	}
	e.Record.RelError = math.Sqrt(errSq / normSq)
	return e, nil
}

// maxRank is the number of vectors the budget could hold at the narrowest
// width, 1 bit: no schedule can keep more.
func maxRank(rows, cols, g int, budget int64) int {
	limit := min(rows, cols)
	bits := make([]int, 0, limit)
	for len(bits) < limit {
		bits = append(bits, 1)
		if alloc.Cost(rows, cols, g, bits) > budget {
			return len(bits) - 1
		}
	}
	return limit
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

// measurer quantizes singular vectors and measures the error of each pair
// at each width, memoized: the allocator asks for many (vector, width) pairs.
type measurer struct {
	svd  *linalg.SVD
	opt  quant.Options
	memo map[[2]int]float64
}

func newMeasurer(svd *linalg.SVD, g int) *measurer {
	return &measurer{svd: svd, opt: quant.Options{GroupSize: g, ClipSearch: true}, memo: make(map[[2]int]float64)}
}

// err returns |s (u v^T - u_q v_q^T)|_F^2 for pair i at width bits. With unit
// u and v this is s^2 (1 - 2 (u.u_q)(v.v_q) + |u_q|^2 |v_q|^2), exact, with
// no rows x cols product.
func (m *measurer) err(i, bits int) float64 {
	s := float64(m.svd.S[i])
	if bits == 0 {
		return s * s
	}
	if v, ok := m.memo[[2]int{i, bits}]; ok {
		return v
	}
	u, v := m.vectors(i)
	uq, vq := m.roundTrip(u, bits), m.roundTrip(v, bits)
	e := s * s * (1 - 2*dot(u, uq)*dot(v, vq) + dot(uq, uq)*dot(vq, vq))
	e = max(e, 0) // rounding can dip a hair below 0 for near-exact 8-bit codes
	m.memo[[2]int{i, bits}] = e
	return e
}

func (m *measurer) vectors(i int) (u, v []float32) {
	r, c := m.svd.Rows, m.svd.Cols
	return m.svd.U[i*r : (i+1)*r], m.svd.V[i*c : (i+1)*c]
}

func (m *measurer) roundTrip(x []float32, bits int) []float32 {
	ng := quant.NumGroups(len(x), m.opt.GroupSize)
	codes := make([]uint8, len(x))
	scales, mins := make([]uint16, ng), make([]uint16, ng)
	quant.Quantize(x, bits, m.opt, codes, scales, mins)
	out := make([]float32, len(x))
	quant.Dequantize(out, codes, scales, mins, bits, m.opt.GroupSize)
	return out
}

// encode quantizes the kept vectors at their widths into Factors.
func (m *measurer) encode(bits []int) Factors {
	var f Factors
	var uw, vw quant.BitWriter
	for i, b := range bits {
		u, v := m.vectors(i)
		f.UQParams = m.quantize(&uw, f.UQParams, u, b)
		f.VQParams = m.quantize(&vw, f.VQParams, v, b)
		f.Sigma = binary.LittleEndian.AppendUint32(f.Sigma, math.Float32bits(m.svd.S[i]))
	}
	f.UCodes, f.VCodes = uw.Bytes(), vw.Bytes()
	return f
}

func (m *measurer) quantize(w *quant.BitWriter, qp []byte, x []float32, bits int) []byte {
	ng := quant.NumGroups(len(x), m.opt.GroupSize)
	codes := make([]uint8, len(x))
	scales, mins := make([]uint16, ng), make([]uint16, ng)
	quant.Quantize(x, bits, m.opt, codes, scales, mins)
	w.WriteCodes(codes, bits)
	for j := range scales {
		qp = binary.LittleEndian.AppendUint16(qp, scales[j])
		qp = binary.LittleEndian.AppendUint16(qp, mins[j])
	}
	return qp
}

// Product decodes f and returns Delta_hat = U_q diag(sigma) V_q^T, row-major
// rows x cols. It checks every blob's length against rec (errors wrap
// archive.ErrFormat) and that sigma is finite.
func (f *Factors) Product(rows, cols int, rec *archive.LowRank) ([]float32, error) {
	r, g := rec.Rank, rec.GroupSize
	if r > min(rows, cols) {
		return nil, fmt.Errorf("%w: rank %d exceeds %dx%d", archive.ErrFormat, r, rows, cols)
	}
	var totalBits int
	for _, b := range rec.Bands {
		totalBits += b.Bits * b.Count
	}
	nqu, nqv := quant.NumGroups(rows, g)*r*4, quant.NumGroups(cols, g)*r*4
	switch {
	case len(f.Sigma) != 4*r:
		return nil, fmt.Errorf("%w: sigma has %d bytes, want %d", archive.ErrFormat, len(f.Sigma), 4*r)
	case len(f.UCodes) != packedLen(rows, totalBits) || len(f.VCodes) != packedLen(cols, totalBits):
		return nil, fmt.Errorf("%w: code blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UCodes), len(f.VCodes), packedLen(rows, totalBits), packedLen(cols, totalBits))
	case len(f.UQParams) != nqu || len(f.VQParams) != nqv:
		return nil, fmt.Errorf("%w: qparam blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(f.UQParams), len(f.VQParams), nqu, nqv)
	}
	us := make([]float32, rows*r) // row-major rows x r: U_q diag(sigma)
	vt := make([]float32, r*cols) // row-major r x cols: V_q^T
	var ur, vr quant.BitReader
	ur.Reset(f.UCodes)
	vr.Reset(f.VCodes)
	u := make([]float32, rows)
	j := 0
	var uqp, vqp []byte = f.UQParams, f.VQParams
	for _, band := range rec.Bands {
		for k := 0; k < band.Count; k++ {
			s := math.Float32frombits(binary.LittleEndian.Uint32(f.Sigma[4*j:]))
			if s-s != 0 {
				return nil, fmt.Errorf("%w: singular value %d is %v", archive.ErrFormat, j, s)
			}
			var err error
			if uqp, err = decodeVector(u, &ur, uqp, band.Bits, g); err != nil {
				return nil, err
			}
			for i, x := range u {
				us[i*r+j] = x * s
			}
			if vqp, err = decodeVector(vt[j*cols:(j+1)*cols], &vr, vqp, band.Bits, g); err != nil {
				return nil, err
			}
			j++
		}
	}
	out := make([]float32, rows*cols)
	if r == 0 {
		return out, nil
	}
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1,
		blas32.General{Rows: rows, Cols: r, Stride: r, Data: us},
		blas32.General{Rows: r, Cols: cols, Stride: cols, Data: vt},
		0, blas32.General{Rows: rows, Cols: cols, Stride: cols, Data: out})
	return out, nil
}

// packedLen is the byte length of a code stream of vectors of n elements
// whose widths sum to sumBits.
func packedLen(n, sumBits int) int { return (n*sumBits + 7) / 8 }

// decodeVector reads one vector's codes from br and its qparams from the
// front of qp, dequantizes into dst and returns the rest of qp.
func decodeVector(dst []float32, br *quant.BitReader, qp []byte, bits, g int) ([]byte, error) {
	ng := quant.NumGroups(len(dst), g)
	codes := make([]uint8, len(dst))
	if err := br.ReadCodes(codes, bits); err != nil {
		return nil, fmt.Errorf("%w: codes: %v", archive.ErrFormat, err)
	}
	scales, mins := make([]uint16, ng), make([]uint16, ng)
	for k := 0; k < ng; k++ {
		scales[k] = binary.LittleEndian.Uint16(qp[4*k:])
		mins[k] = binary.LittleEndian.Uint16(qp[4*k+2:])
		if s, mn := dtype.Float32FromBF16(scales[k]), dtype.Float32FromBF16(mins[k]); s-s != 0 || mn-mn != 0 {
			return nil, fmt.Errorf("%w: non-finite quantization parameter", archive.ErrFormat)
		}
	}
	quant.Dequantize(dst, codes, scales, mins, bits, g)
	return qp[4*ng:], nil
}

// Apply writes base + Delta_hat into dst, encoded as dt (rounding to nearest
// even). base is decoded from baseDT; dst must hold rows x cols elements of dt.
func Apply(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols int, rec *archive.LowRank, f *Factors) error {
	if rec == nil {
		return fmt.Errorf("%w: low-rank record missing", archive.ErrFormat)
	}
	hat, err := f.Product(rows, cols, rec)
	if err != nil {
		return err
	}
	w := make([]float32, rows*cols)
	if err := dtype.Decode(w, base, baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	for i := range w {
		w[i] += hat[i]
	}
	return dtype.Encode(dst, w, dt)
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
