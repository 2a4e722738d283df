package linalg

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
)

// randomizedGram carries out Randomized's steps 1-3 with a sketch of l
// columns and q power iterations; seed seeds Ω.
func randomizedGram(a []float32, rows, cols, rank, l, q int, seed uint64) (*SVD, error) {
	short, long := min(rows, cols), max(rows, cols)
	wide := rows <= cols
	g := make([]float32, short*short)
	if wide { // X = A, short x long
		blas32Impl.Ssyrk(blas.Upper, blas.NoTrans, short, long, 1, a, cols, 0, g, short)
	} else { // X = Aᵀ: G = AᵀA
		blas32Impl.Ssyrk(blas.Upper, blas.Trans, short, long, 1, a, cols, 0, g, short)
	}
	for i := range short { // mirror the upper triangle for plain products
		for j := range i {
			g[i*short+j] = g[j*short+i]
		}
	}
	y := make([]float32, short*l)
	w := make([]float32, short*l)
	gaussian(w, seed)
	ws := newOrthWork(short, l)
	for it := 0; it <= q; it++ {
		gemm32(blas.NoTrans, blas.NoTrans, short, l, short, g, short, w, l, y, l)
		if err := ws.orthonormalize(y, it == q); err != nil {
			return nil, err
		}
		w, y = y, w
	}
	// w holds Q. Rayleigh–Ritz: T = Qᵀ·G·Q, l x l.
	gemm32(blas.NoTrans, blas.NoTrans, short, l, short, g, short, w, l, y, l)
	t32 := make([]float32, l*l)
	gemm32(blas.Trans, blas.NoTrans, l, l, short, w, l, y, l, t32, l)
	t := make([]float64, l*l)
	for i, v := range t32 {
		t[i] = float64(v)
	}
	ev := make([]float64, rank)
	wv := make([]float64, l*rank)
	if !symEigTop(l, rank, t, ev, wv) {
		return nil, fmt.Errorf("%w: symmetric eigensolver, %d x %d projected Gram matrix", ErrNoConvergence, l, l)
	}
	w32 := make([]float32, len(wv))
	for i, x := range wv {
		w32[i] = float32(x)
	}
	// Left vectors as rows: Uᵀ = Wᵀ·Qᵀ (rank x short).
	us := make([]float32, rank*short)
	gemm32(blas.Trans, blas.Trans, rank, short, l, w32, rank, w, l, us, short)
	for j := range rank {
		normalize32(us[j*short : (j+1)*short])
	}
	// Right vectors as rows: Vᵀ = Uᵀ·X (rank x long).
	vl := make([]float32, rank*long)
	if wide {
		gemm32(blas.NoTrans, blas.NoTrans, rank, long, short, us, short, a, cols, vl, long)
	} else {
		gemm32(blas.NoTrans, blas.Trans, rank, long, short, us, short, a, cols, vl, long)
	}
	s := make([]float64, rank)
	s0 := 0.0
	for j := range rank {
		s[j] = normalize32(vl[j*long : (j+1)*long])
		s0 = math.Max(s0, s[j])
	}
	if wide {
		return finish32(us, vl, s, rows, cols, randZeroTol(rows, cols, s0)), nil
	}
	return finish32(vl, us, s, rows, cols, randZeroTol(rows, cols, s0)), nil
}
