package lowrankbf16

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/nlpodyssey/safetensors"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// factorBytes is the size of one stored factor element: a bf16.
const factorBytes = 2

// Cost returns the bytes stored for the rank-r factors of a rows x cols
// matrix: r (rows + cols) bf16 values.
func Cost(rows, cols, rank int) int64 {
	return int64(rank) * int64(rows+cols) * factorBytes
}

// MaxRank returns the largest rank whose factors fit budget bytes, at most
// min(rows, cols).
func MaxRank(rows, cols int, budget int64) int {
	if budget <= 0 {
		return 0
	}
	return int(min(budget/Cost(rows, cols, 1), int64(min(rows, cols))))
}

// Encoded is the result of Encode: the blobs and the manifest record.
type Encoded struct {
	// U holds B = U_r diag(sqrt(s)), row-major rows x rank, bf16 little-endian.
	U []byte
	// V holds A = diag(sqrt(s)) V_r^T, row-major rank x cols, bf16 little-endian.
	V      []byte
	Record archive.LowRankBF16
}

// Encode stores delta (row-major rows x cols, finite) as the bf16 factors of
// its truncated SVD (linalg.Exact) at the largest rank within
// svdquant.Budget(rows, cols, ratio) bytes, and records the relative error
// of what Product gives back. An all-zero delta, or a budget too small for
// one pair, gets rank 0 (error 0 and 1 respectively).
func Encode(delta []float32, rows, cols int, ratio float64) (*Encoded, error) {
	budget := svdquant.Budget(rows, cols, ratio)
	var normSq float64
	for _, d := range delta {
		normSq += float64(d) * float64(d)
	}
	e := &Encoded{Record: archive.LowRankBF16{Budget: budget, DeltaNorm: math.Sqrt(normSq)}}
	r := MaxRank(rows, cols, budget)
	if normSq == 0 || r == 0 {
		if normSq > 0 {
			e.Record.RelError = 1
		}
		return e, nil
	}
	svd, err := linalg.Exact(delta, rows, cols, r)
	if err != nil {
		return nil, fmt.Errorf("svd: %w", err)
	}
	r = svd.Rank
	e.U = make([]byte, rows*r*factorBytes)
	e.V = make([]byte, r*cols*factorBytes)
	var kept float64
	for j := 0; j < r; j++ {
		s := float64(svd.S[j])
		kept += s * s
		root := float32(math.Sqrt(s))
		for i, x := range svd.LeftVec(j) {
			binary.LittleEndian.PutUint16(e.U[(i*r+j)*factorBytes:], dtype.BF16FromFloat32(x*root))
		}
		for k, x := range svd.RightVec(j) {
			binary.LittleEndian.PutUint16(e.V[(j*cols+k)*factorBytes:], dtype.BF16FromFloat32(x*root))
		}
	}
	e.Record.Rank = r
	e.Record.EnergyKept = kept / normSq

	hat, err := Product(e.U, e.V, rows, cols, r)
	if err != nil {
		panic(fmt.Sprintf("lowrankbf16: decoding what was just encoded: %v", err))
	}
	var errSq float64
	for i, d := range delta {
		x := float64(d) - float64(hat[i])
		errSq += x * x
	}
	e.Record.RelError = math.Sqrt(errSq / normSq)
	return e, nil
}

// Product decodes the factors and returns Delta_hat = B A, row-major rows x
// cols, computed in float32. It returns an error wrapping archive.ErrFormat
// when rank exceeds min(rows, cols), a blob has the wrong length, or a
// factor is not finite.
func Product(u, v []byte, rows, cols, rank int) ([]float32, error) {
	if rank < 0 || rank > min(rows, cols) {
		return nil, fmt.Errorf("%w: rank %d for a %dx%d matrix", archive.ErrFormat, rank, rows, cols)
	}
	if len(u) != rows*rank*factorBytes || len(v) != rank*cols*factorBytes {
		return nil, fmt.Errorf("%w: factor blobs have %d and %d bytes, want %d and %d", archive.ErrFormat,
			len(u), len(v), rows*rank*factorBytes, rank*cols*factorBytes)
	}
	b, a := make([]float32, rows*rank), make([]float32, rank*cols)
	if err := dtype.Decode(b, u, safetensors.BF16); err != nil {
		return nil, fmt.Errorf("%w: u: %v", archive.ErrFormat, err)
	}
	if err := dtype.Decode(a, v, safetensors.BF16); err != nil {
		return nil, fmt.Errorf("%w: v: %v", archive.ErrFormat, err)
	}
	for _, f := range [][]float32{b, a} {
		for _, x := range f {
			if x-x != 0 { // NaN - NaN and Inf - Inf are NaN
				return nil, fmt.Errorf("%w: factor entry is %v", archive.ErrFormat, x)
			}
		}
	}
	out := make([]float32, rows*cols)
	if rank == 0 {
		return out, nil
	}
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1,
		blas32.General{Rows: rows, Cols: rank, Stride: rank, Data: b},
		blas32.General{Rows: rank, Cols: cols, Stride: cols, Data: a},
		0, blas32.General{Rows: rows, Cols: cols, Stride: cols, Data: out})
	return out, nil
}

// Apply writes base + B A into dst, computed in float32 and encoded as dt
// (round to nearest, ties to even); at rank 0 dst is base cast to dt. base holds rows x cols elements of
// baseDT, dst rows x cols elements of dt. Malformed records or blobs give
// errors wrapping archive.ErrFormat.
func Apply(dst []byte, dt safetensors.DType, base []byte, baseDT safetensors.DType, rows, cols int, rec *archive.LowRankBF16, u, v []byte) error {
	if rec == nil {
		return fmt.Errorf("%w: lowrank_bf16 record missing", archive.ErrFormat)
	}
	hat, err := Product(u, v, rows, cols, rec.Rank)
	if err != nil {
		return err
	}
	w := make([]float32, rows*cols)
	if err := dtype.Decode(w, base, baseDT); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	if rec.Rank > 0 { // rank 0: the base itself, -0 included
		for i := range w {
			w[i] += hat[i]
		}
	}
	return dtype.Encode(dst, w, dt)
}
