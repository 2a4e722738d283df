package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/internal/synth"
	"github.com/deltacome/deltacome/pkg/archive"
)

// calibSites returns synthetic statistics for every site of the 2-D
// weights of the checkpoint at path (full matrices, by site), measured on
// tokens inputs.
func calibSites(t *testing.T, path string, tokens int, seed uint64) map[string][]float32 {
	t.Helper()
	c, err := checkpoint.Open(path)
	require.NoError(t, err)
	defer c.Close()
	rng := rand.New(rand.NewPCG(seed, 1))
	sites := map[string][]float32{}
	for _, name := range c.Names() {
		tt, _ := c.Tensor(name)
		site := CalibrationSite(name)
		if len(tt.Shape) != 2 || site == "" || name == "lm_head.weight" || name == "model.embed_tokens.weight" {
			continue
		}
		if _, ok := sites[site]; !ok {
			sites[site] = synth.Gram(rng, int(tt.Shape[1]), tokens)
		}
	}
	return sites
}

// writeStats writes sites (full matrices) as a statistics file with the
// fine-tune's fingerprint and returns its path.
func writeStats(t *testing.T, sites map[string][]float32, tokens int, fingerprint string) string {
	t.Helper()
	packed := map[string][]float32{}
	for name, h := range sites {
		n := int(math.Sqrt(float64(len(h))))
		packed[name] = PackTriangle(h, n)
	}
	path := filepath.Join(t.TempDir(), "stats.safetensors")
	require.NoError(t, WriteCalibration(path, packed, map[string]string{CalibTokensKey: strconv.Itoa(tokens),
		CalibTextKey: "synthetic.txt", CalibTextSHA256Key: "00", CalibFingerprintKey: fingerprint}))
	return path
}

// hWeighted returns Σ tr(E H Eᵀ) over the lossy projections of m, E the
// reconstruction's error against the fine-tune, and Σ tr(Delta H Deltaᵀ).
func hWeighted(t *testing.T, m *archive.Manifest, sites map[string][]float32, rec string) (errSq, normSq float64) {
	t.Helper()
	return hWeightedPair(t, m, sites, tinyBase, tinyFT, rec)
}

// hWeightedPair is hWeighted for the pair base, ft.
func hWeightedPair(t *testing.T, m *archive.Manifest, sites map[string][]float32, base, ft, rec string) (errSq, normSq float64) {
	t.Helper()
	cb, cf, cr := openForTest(t, base), openForTest(t, ft), openForTest(t, rec)
	decode := func(c *checkpoint.Checkpoint, name string) []float32 { return decodeForTest(t, c, name) }
	quad := func(e, h []float32, rows, cols int) float64 { // tr(E H Eᵀ)
		eh := make([]float32, rows*cols)
		linalg.Mul(eh, e, h, rows, cols, cols)
		var s float64
		for i := range e {
			s += float64(e[i]) * float64(eh[i])
		}
		return s
	}
	for _, r := range m.Tensors {
		if r.Kind != archive.KindLowRankSym {
			continue
		}
		rows, cols := int(r.Shape[0]), int(r.Shape[1])
		wb, wf, wr := decode(cb, r.Name), decode(cf, r.Name), decode(cr, r.Name)
		d, e := make([]float32, len(wf)), make([]float32, len(wf))
		for i := range wf {
			d[i], e[i] = wf[i]-wb[i], wr[i]-wf[i]
		}
		h := sites[CalibrationSite(r.Name)]
		errSq += quad(e, h, rows, cols)
		normSq += quad(d, h, rows, cols)
	}
	return errSq, normSq
}

func lossyBytes(m *archive.Manifest) map[string]int64 {
	out := map[string]int64{}
	for _, r := range m.Tensors {
		if archive.KindLossy(r.Kind) {
			out[r.Name] = r.StoredBytes()
		}
	}
	return out
}

// TestCalibratedCompress compresses the tiny pair with synthetic statistics
// and checks what the feature promises: a lower H-weighted output error
// than data-free at the same bytes, measured on the reconstructions;
// settings and per-tensor records; the thin-statistics warning.
func TestCalibratedCompress(t *testing.T) {
	ctx := context.Background()
	fp, err := Fingerprint(ctx, tinyFT)
	require.NoError(t, err)
	// 4096 tokens: 16 x 256, under the generic minimum, so compress warns.
	const tokens = 4096
	sites := calibSites(t, tinyFT, tokens, 3)
	stats := writeStats(t, sites, tokens, fp)

	dir := t.TempDir()
	for _, ratio := range []float64{16, 32} {
		t.Run(fmt.Sprint(ratio), func(t *testing.T) {
			free, cal := filepath.Join(dir, fmt.Sprintf("free%g.dcm", ratio)), filepath.Join(dir, fmt.Sprintf("cal%g.dcm", ratio))
			_, err := Compress(ctx, tinyBase, tinyFT, free, deltaOpts(t, ratio, "auto"))
			require.NoError(t, err)
			opt := deltaOpts(t, ratio, "auto")
			opt.Calibration = stats
			sum, err := Compress(ctx, tinyBase, tinyFT, cal, opt)
			require.NoError(t, err)
			var codes []string
			for _, w := range sum.Warnings {
				codes = append(codes, w.Code)
			}
			assert.Equal(t, []string{WarnThinCalibration}, codes, "the fingerprint matches and every projection has a site")

			var mf, mc *archive.Manifest
			for _, p := range []struct {
				path string
				m    **archive.Manifest
			}{{free, &mf}, {cal, &mc}} {
				r, err := archive.Open(p.path)
				require.NoError(t, err)
				*p.m = r.Manifest
				require.NoError(t, r.Close())
			}
			assert.Equal(t, lossyBytes(mf), lossyBytes(mc), "the same bytes for every projection")
			require.NotNil(t, mc.Settings.Calibration)
			assert.Equal(t, archive.Calibration{File: "stats.safetensors", Tokens: tokens, Text: "synthetic.txt", TextSHA256: "00",
				Fingerprint: fp, Sites: 16}, *mc.Settings.Calibration)
			assert.Nil(t, mf.Settings.Calibration)
			kept := 0
			for _, r := range mc.Tensors {
				if r.Kind == archive.KindLowRankSym {
					assert.Contains(t, []string{svdquant.CalibKept, svdquant.CalibDataFree}, r.LowRankSym.Calibration, r.Name)
					assert.LessOrEqual(t, r.LowRankSym.HRelError, r.LowRankSym.HRelErrorDataFree, r.Name)
					if r.LowRankSym.Calibration == svdquant.CalibKept {
						kept++
					}
				}
			}
			assert.Greater(t, kept, 20, "of 28 projections")

			// Reconstruct works unchanged; the H-weighted error is measured
			// on the bf16 reconstructions.
			var rel [2]float64
			for i, arch := range []string{free, cal} {
				out := filepath.Join(dir, fmt.Sprintf("out%g-%d", ratio, i))
				_, err := Reconstruct(ctx, tinyBase, arch, out, ReconstructOptions{})
				require.NoError(t, err)
				e, n := hWeighted(t, mc, sites, out)
				rel[i] = math.Sqrt(e / n)
			}
			t.Logf("ratio %g: H-weighted relative error data-free %.4f, calibrated %.4f (synthetic statistics)", ratio, rel[0], rel[1])
			assert.Less(t, rel[1], 0.95*rel[0], "calibration lowers the output error by more than 5%")
		})
	}
}

// TestCalibrationMissingSites checks that projections without a site are
// compressed data-free, recorded and warned about, and that a fingerprint
// of another checkpoint is a warning.
func TestCalibrationMissingSites(t *testing.T) {
	sites := calibSites(t, tinyFT, 512, 7)
	for name := range sites {
		if CalibrationSite("model.layers.0.mlp.down_proj.weight") != name {
			delete(sites, name)
		}
	}
	opt := deltaOpts(t, 16, "auto")
	opt.Calibration = writeStats(t, sites, 1<<20, "sha256:other")
	arch := filepath.Join(t.TempDir(), "a.dcm")
	sum, err := Compress(context.Background(), tinyBase, tinyFT, arch, opt)
	require.NoError(t, err)
	var codes []string
	for _, w := range sum.Warnings {
		codes = append(codes, w.Code)
	}
	assert.Equal(t, []string{WarnNoCalibrationSite, WarnCalibrationModel}, codes)
	r, err := archive.Open(arch)
	require.NoError(t, err)
	defer r.Close()
	for _, rec := range r.Manifest.Tensors {
		if rec.Kind != archive.KindLowRankSym {
			continue
		}
		if rec.Name == "model.layers.0.mlp.down_proj.weight" {
			assert.NotEqual(t, CalibNoStatistics, rec.LowRankSym.Calibration)
		} else {
			assert.Equal(t, CalibNoStatistics, rec.LowRankSym.Calibration, rec.Name)
		}
	}
}

// TestCalibrationRefused checks that statistics that do not fit the
// fine-tune, or are corrupt, are refused before any work, naming the file
// and the tensor.
func TestCalibrationRefused(t *testing.T) {
	const site = "model.layers.1.self_attn.qkv_proj"
	good := func() map[string][]float32 { return calibSites(t, tinyFT, 512, 9) }
	for _, tc := range []struct {
		name   string
		edit   func(sites map[string][]float32, meta map[string]string)
		tensor string
	}{
		{"wrong width", func(s map[string][]float32, _ map[string]string) {
			s[site] = synth.Gram(rand.New(rand.NewPCG(1, 1)), 100, 200)
		}, site},
		{"unknown site", func(s map[string][]float32, _ map[string]string) { s["model.layers.9.mlp.down_proj"] = s[site] }, "model.layers.9.mlp.down_proj"},
		{"NaN", func(s map[string][]float32, _ map[string]string) { s[site][5] = float32(math.NaN()) }, site},
		{"Inf", func(s map[string][]float32, _ map[string]string) { s[site][384*3+7] = float32(math.Inf(1)) }, site},
		{"negative diagonal", func(s map[string][]float32, _ map[string]string) { s[site][384*2+2] = -1 }, site},
		{"no token count", func(_ map[string][]float32, m map[string]string) { delete(m, CalibTokensKey) }, ""},
		{"not a triangle", func(s map[string][]float32, _ map[string]string) { s[site] = s[site][:11] }, site},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sites := good()
			meta := map[string]string{CalibTokensKey: "512"}
			tc.edit(sites, meta)
			packed := map[string][]float32{}
			for name, h := range sites {
				n := int(math.Sqrt(float64(len(h))))
				if n*n == len(h) {
					packed[name] = PackTriangle(h, n)
				} else {
					packed[name] = h
				}
			}
			stats := filepath.Join(t.TempDir(), "stats.safetensors")
			require.NoError(t, WriteCalibration(stats, packed, meta))
			opt := deltaOpts(t, 16, "auto")
			opt.Calibration = stats
			arch := filepath.Join(t.TempDir(), "a.dcm")
			_, err := Compress(context.Background(), tinyBase, tinyFT, arch, opt)
			require.ErrorIs(t, err, ErrInput)
			var ce *CalibrationError
			require.True(t, errors.As(err, &ce), "%v", err)
			assert.Equal(t, stats, ce.File)
			assert.Equal(t, tc.tensor, ce.Tensor)
			assert.NoFileExists(t, arch)
			t.Log(err)
		})
	}
	t.Run("not statistics", func(t *testing.T) {
		opt := deltaOpts(t, 16, "auto")
		opt.Calibration = filepath.Join(tinyFT, "model.safetensors")
		_, err := Compress(context.Background(), tinyBase, tinyFT, filepath.Join(t.TempDir(), "a.dcm"), opt)
		var ce *CalibrationError
		require.True(t, errors.As(err, &ce), "%v", err)
		assert.ErrorIs(t, err, ErrInput)
	})
}

func TestCalibrationUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(o *CompressOptions)
	}{
		{"grid asym", func(o *CompressOptions) { o.Grid, o.GroupSize = GridAsym, 128 }},
		{"max error", func(o *CompressOptions) { o.MaxError = 0.3 }},
		{"budget model", func(o *CompressOptions) { o.Budget = BudgetModel }},
		{"bitdelta", func(o *CompressOptions) { o.Method = MethodBitDelta }},
		{"lossless", func(o *CompressOptions) { o.Mode = ModeLossless }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := deltaOpts(t, 16, "auto")
			opt.Calibration = "stats.safetensors"
			tc.edit(&opt)
			_, err := Compress(context.Background(), tinyBase, tinyFT, filepath.Join(t.TempDir(), "a.dcm"), opt)
			assert.ErrorIs(t, err, ErrUsage)
		})
	}
}

func TestCalibrationSite(t *testing.T) {
	for name, want := range map[string]string{
		"model.layers.3.self_attn.q_proj.weight":              "model.layers.3.self_attn.qkv_proj",
		"model.layers.3.self_attn.v_proj.weight":              "model.layers.3.self_attn.qkv_proj",
		"model.layers.3.self_attn.o_proj.weight":              "model.layers.3.self_attn.o_proj",
		"model.layers.3.mlp.gate_proj.weight":                 "model.layers.3.mlp.gate_up_proj",
		"model.layers.3.mlp.up_proj.weight":                   "model.layers.3.mlp.gate_up_proj",
		"model.layers.3.mlp.down_proj.weight":                 "model.layers.3.mlp.down_proj",
		"model.layers.0.mlp.experts.0.gate_proj.weight":       "model.layers.0.mlp.experts.0.gate_up_proj",
		"model.layers.0.block_sparse_moe.experts.2.w1.weight": "model.layers.0.block_sparse_moe.experts.2.w1",
		"transformer.h.0.attn.c_attn.weight":                  "transformer.h.0.attn.c_attn",
		"model.layers.0.self_attn.q_proj.bias":                "",
		"lm_head":                                             "",
	} {
		assert.Equal(t, want, CalibrationSite(name), name)
	}
}
