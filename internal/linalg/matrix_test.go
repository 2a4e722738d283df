package linalg

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// copied is a Matrix that is not Dense: it copies the rows it is asked for,
// as a matrix decoded from a checkpoint does, and counts the entries read.
type copied struct {
	d    *Dense
	read int
}

func (c *copied) Dims() (int, int) { return c.d.Dims() }

func (c *copied) ReadRows(dst []float32, r0, r1 int) error {
	c.read += len(dst)
	return c.d.ReadRows(dst, r0, r1)
}

// smallPanels makes the randomized route stream matrices of more than
// whole entries, in panels of at most panel entries, for the test.
func smallPanels(t *testing.T, whole, panel int) {
	w, p := wholeElems, panelElems
	wholeElems, panelElems = whole, panel
	t.Cleanup(func() { wholeElems, panelElems = w, p })
}

func TestPanelRows(t *testing.T) {
	for _, tc := range []struct{ rows, cols, want int }{
		{4096, 11008, 4096},   // Llama-2-7B: whole
		{14336, 4096, 14336},  // Llama-3-8B MLP: whole
		{28672, 8192, 4096},   // 70B MLP, tall: 4096 x 8192 = 32Mi
		{8192, 28672, 1024},   // 70B MLP, wide: 1170 rows fit, whole tiles
		{16384, 53248, 512},   // 405B MLP
		{300000, 200000, 256}, // wider than a panel: one tile of rows
	} {
		assert.Equal(t, tc.want, PanelRows(tc.rows, tc.cols), "%d x %d", tc.rows, tc.cols)
	}
}

func TestStreamedSameBits(t *testing.T) {
	// A matrix read in panels gives the bits it gives held whole (the same
	// panels, views instead of copies), for either orientation, on the
	// Krylov route and on the full-space one a large rank takes.
	smallPanels(t, 64*1024, 16*1024)
	for _, tc := range []struct{ rows, cols, rank int }{
		{512, 1300, 40},
		{1300, 512, 40},
		{512, 1300, 400}, // l ≥ 512: full space
		{1300, 512, 400},
	} {
		t.Run(fmt.Sprintf("%dx%d_rank%d", tc.rows, tc.cols, tc.rank), func(t *testing.T) {
			require.True(t, Streamed(tc.rows, tc.cols))
			rng := rand.New(rand.NewPCG(uint64(tc.rows), uint64(tc.rank)))
			a := slowSpectrum(rng, tc.rows, tc.cols, 120, 0.3)
			dense := &Dense{Data: a, Rows: tc.rows, Cols: tc.cols}
			want, err := RandomizedMatrix(dense, tc.rank, DefaultRandomized())
			require.NoError(t, err)
			src := &copied{d: dense}
			got, err := RandomizedMatrix(src, tc.rank, DefaultRandomized())
			require.NoError(t, err)
			assert.Equal(t, want.S, got.S)
			assert.Equal(t, want.U, got.U)
			assert.Equal(t, want.V, got.V)
			assert.Equal(t, RouteRandomized, got.Route)
			assert.Empty(t, got.Fallback)
			// Read twice (the Gram matrix, the right vectors), and for a
			// wide matrix the later panels once per earlier one.
			assert.GreaterOrEqual(t, src.read, 2*len(a))
		})
	}
}

func TestStreamedAccuracy(t *testing.T) {
	// Streaming changes the order of the sums only: the truncation residual
	// of a streamed matrix stays within the default's slack of optimal
	// (TestRandomizedAccuracy), and the full-space route a large rank takes
	// when streamed is within 0.1% of the exact route (float32 Gram
	// matrix: measured +0.000% here). Its trailing vectors, float32
	// eigenvectors of the Gram matrix's clustered small eigenvalues, are
	// orthogonal to about 3e-5 rather than orthoTol; the residual is what
	// the stored error depends on.
	smallPanels(t, 64*1024, 16*1024)
	for _, tc := range []struct {
		rows, cols, rank int
		slack            float64
	}{
		{400, 1100, 60, 1.08},
		{1100, 400, 60, 1.08},
		{400, 1100, 300, 1.001},
		{1100, 400, 300, 1.001},
	} {
		t.Run(fmt.Sprintf("%dx%d_rank%d", tc.rows, tc.cols, tc.rank), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.cols), uint64(tc.rank)))
			a := slowSpectrum(rng, tc.rows, tc.cols, 120, 0.2)
			d, err := RandomizedMatrix(&copied{d: &Dense{Data: a, Rows: tc.rows, Cols: tc.cols}}, tc.rank, DefaultRandomized())
			require.NoError(t, err)
			e, err := Exact(a, tc.rows, tc.cols, tc.rank)
			require.NoError(t, err)
			res, total := residualSq(a, d)
			exact, _ := residualSq(a, e)
			t.Logf("residual %.6f of |A|^2, exact route %.6f", res/total, exact/total)
			assert.Less(t, res, exact*tc.slack)
			if tc.rank < 100 {
				assertOrthonormal(t, d.U, d.Rows, d.Rank, "U")
				assertOrthonormal(t, d.V, d.Cols, d.Rank, "V")
			}
		})
	}
}

func TestStreamedReadError(t *testing.T) {
	// An error reading the matrix is returned as it is, never a breakdown.
	smallPanels(t, 64*1024, 16*1024)
	rng := rand.New(rand.NewPCG(1, 2))
	a := slowSpectrum(rng, 512, 1300, 60, 0.3)
	bad := errors.New("unreadable")
	_, err := RandomizedMatrix(&failing{copied{d: &Dense{Data: a, Rows: 512, Cols: 1300}}, 3, bad}, 40, DefaultRandomized())
	require.ErrorIs(t, err, bad)
}

// failing is a Matrix whose reads fail from the n-th on.
type failing struct {
	copied
	n   int
	err error
}

func (f *failing) ReadRows(dst []float32, r0, r1 int) error {
	if f.n--; f.n < 0 {
		return f.err
	}
	return f.copied.ReadRows(dst, r0, r1)
}

func TestStreamedZero(t *testing.T) {
	smallPanels(t, 64*1024, 16*1024)
	d, err := RandomizedMatrix(&copied{d: &Dense{Data: make([]float32, 512*1300), Rows: 512, Cols: 1300}}, 40, DefaultRandomized())
	require.NoError(t, err)
	assert.Zero(t, d.Rank)
}

func TestPermute(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 5, 17} {
		idx := rng.Perm(n)
		x := make([]float32, 3*n)
		for i := range x {
			x[i] = float32(i)
		}
		want := make([]float32, 3*n)
		for j, src := range idx {
			copy(want[3*j:3*j+3], x[3*src:3*src+3])
		}
		permute(x, 3, idx)
		assert.Equal(t, want, x, "%v", idx)
	}
}
