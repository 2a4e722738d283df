package linalg

import (
	"fmt"

	"gonum.org/v1/gonum/blas"
)

// Matrix is a rows x cols float32 matrix that the randomized route reads a
// block of rows at a time, so that a matrix too large to hold whole in
// float32 (a weight delta decoded from two mapped checkpoints) can be
// decomposed in bounded memory. Dense is the matrix held whole.
type Matrix interface {
	// Dims returns the matrix's shape.
	Dims() (rows, cols int)
	// ReadRows writes rows [r0, r1) row-major into dst, which holds
	// exactly (r1-r0)·cols values. It returns an error for entries it
	// cannot produce (an unreadable or non-finite input); the values it
	// writes are finite.
	ReadRows(dst []float32, r0, r1 int) error
}

// Dense is a Matrix held whole: Data row-major, Rows x Cols.
type Dense struct {
	Data       []float32
	Rows, Cols int
}

// Dims returns the matrix's shape.
func (d *Dense) Dims() (int, int) { return d.Rows, d.Cols }

// ReadRows copies rows [r0, r1) into dst.
func (d *Dense) ReadRows(dst []float32, r0, r1 int) error {
	copy(dst, d.Data[r0*d.Cols:r1*d.Cols])
	return nil
}

// Panel sizes of the streamed products. A matrix of at most wholeElems
// entries is read as one panel, whole, as it was before streaming: every
// projection of the 7B and 8B Llama models (Llama-3-8B's MLP is 14336 x
// 4096, 58.7M entries), whose results therefore stay the bits they were. A
// larger one is read in panels of rows holding at most panelElems entries
// (128 MiB of float32), a multiple of productTile rows so that the product
// tiles of a panel are the tiles of the whole product. The cut depends on
// the shape only: the results do not depend on the memory or the cores.
// Variables so that tests can stream small matrices.
var (
	wholeElems = 64 << 20
	panelElems = 32 << 20
)

// PanelRows returns the rows per panel in which the randomized route reads
// a rows x cols matrix: all of them up to 64Mi entries, else the most that
// keep a panel within 32Mi entries, in whole product tiles (at least one).
func PanelRows(rows, cols int) int {
	if rows*cols <= wholeElems {
		return rows
	}
	return min(rows, max(productTile, panelElems/cols/productTile*productTile))
}

// Streamed reports whether the randomized route reads a rows x cols matrix
// in more than one panel; the whole matrix is then never held in float32.
func Streamed(rows, cols int) bool { return PanelRows(rows, cols) < rows }

// panels reads the row panels of a Matrix into reusable buffers; a Dense
// matrix's panels are views of its data.
type panels struct {
	m          Matrix
	rows, cols int
	step       int // rows per panel
	buf        [2][]float32
}

func newPanels(m Matrix) *panels {
	rows, cols := m.Dims()
	return &panels{m: m, rows: rows, cols: cols, step: PanelRows(rows, cols)}
}

// read returns rows [r0, r1) of the matrix, in slot's buffer unless the
// matrix is Dense (valid until the slot is read again).
func (p *panels) read(slot, r0, r1 int) ([]float32, error) {
	if d, ok := p.m.(*Dense); ok {
		return d.Data[r0*p.cols : r1*p.cols], nil
	}
	n := (r1 - r0) * p.cols
	if cap(p.buf[slot]) < n {
		p.buf[slot] = nil // let the old one go first
		p.buf[slot] = make([]float32, n)
	}
	dst := p.buf[slot][:n]
	if err := p.m.ReadRows(dst, r0, r1); err != nil {
		return nil, err
	}
	return dst, nil
}

// each calls fn(r0, r1, a) for the panels [r0, r1) in order, a holding the
// panel's rows (slot 0).
func (p *panels) each(fn func(r0, r1 int, a []float32) error) error {
	for r0 := 0; r0 < p.rows; r0 += p.step {
		r1 := min(r0+p.step, p.rows)
		a, err := p.read(0, r0, r1)
		if err != nil {
			return err
		}
		if err := fn(r0, r1, a); err != nil {
			return err
		}
	}
	return nil
}

// release drops the panel buffers.
func (p *panels) release() { p.buf = [2][]float32{} }

// whole returns the matrix's data row-major: its own for a Dense matrix,
// else read into a new rows x cols slice.
func whole(m Matrix) ([]float32, error) {
	if d, ok := m.(*Dense); ok {
		return d.Data, nil
	}
	rows, cols := m.Dims()
	a := make([]float32, rows*cols)
	if err := m.ReadRows(a, 0, rows); err != nil {
		return nil, err
	}
	return a, nil
}

// checkMatrix validates the arguments of the Matrix routes.
func checkMatrix(m Matrix, rank int) error {
	rows, cols := m.Dims()
	if rows <= 0 || cols <= 0 {
		return fmt.Errorf("%w: %d x %d matrix", ErrShape, rows, cols)
	}
	if d, ok := m.(*Dense); ok {
		return checkArgs(d.Data, rows, cols, rank)
	}
	if rank < 0 || rank > min(rows, cols) {
		return fmt.Errorf("%w: rank %d outside [0, %d] for a %d x %d matrix", ErrShape, rank, min(rows, cols), rows, cols)
	}
	return nil
}

// gramOf returns the upper triangle of the short-side Gram matrix G = X·Xᵀ
// of m (X = A when rows ≤ cols, else Aᵀ), short x short, in float32, reading
// m panel by panel. For a wide A, block (p, q) of G is A_p·A_qᵀ for row
// panels p ≤ q: each tile of G is the one BLAS call of the whole product.
// For a tall A, G = Σ_p A_pᵀ·A_p, summed over the panels in order.
func gramOf(p *panels) ([]float32, error) {
	rows, cols := p.rows, p.cols
	short := min(rows, cols)
	g := make([]float32, short*short)
	if rows <= cols {
		for p0 := 0; p0 < rows; p0 += p.step {
			p1 := min(p0+p.step, rows)
			ap, err := p.read(0, p0, p1)
			if err != nil {
				return nil, err
			}
			syrkUpper32(false, p1-p0, cols, ap, cols, 0, g[p0*short+p0:], short)
			for q0 := p1; q0 < rows; q0 += p.step {
				q1 := min(q0+p.step, rows)
				aq, err := p.read(1, q0, q1)
				if err != nil {
					return nil, err
				}
				gemm32(blas.NoTrans, blas.Trans, p1-p0, q1-q0, cols, ap, cols, aq, cols, g[p0*short+q0:], short)
			}
		}
		return g, nil
	}
	err := p.each(func(r0, r1 int, a []float32) error {
		beta := float32(1)
		if r0 == 0 {
			beta = 0
		}
		syrkUpper32(true, cols, r1-r0, a, cols, beta, g, short)
		return nil
	})
	return g, err
}

// rightOf returns Vᵀ = Uᵀ·X (rank x long) for the rank short-side vectors
// us (row-major rank x short), reading m panel by panel: for a wide A the
// products of the panels summed in order, for a tall one each panel's
// columns of the result.
func rightOf(p *panels, us []float32, rank int) ([]float32, error) {
	rows, cols := p.rows, p.cols
	short, long := min(rows, cols), max(rows, cols)
	vl := make([]float32, rank*long)
	err := p.each(func(r0, r1 int, a []float32) error {
		if rows <= cols {
			beta := float32(1)
			if r0 == 0 {
				beta = 0
			}
			gemm32ab(blas.NoTrans, blas.NoTrans, rank, cols, r1-r0, 1, us[r0:], short, a, cols, beta, vl, cols)
		} else {
			gemm32(blas.NoTrans, blas.Trans, rank, r1-r0, cols, us, short, a, cols, vl[r0:], long)
		}
		return nil
	})
	return vl, err
}

// allZeroMatrix reports whether every entry of m is zero.
func allZeroMatrix(p *panels) (bool, error) {
	zero := true
	err := p.each(func(_, _ int, a []float32) error {
		zero = zero && allZero(a)
		return nil
	})
	return zero, err
}
