package engine

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/archive"
)

// llamaStats returns the input statistics of every site of a Llama
// checkpoint (no biases, RMSNorm, rotary positions of theta 10000 on the
// rotate-half layout transformers uses) measured on windows of byte tokens:
// a forward of the model in float32, full matrices by site. It is a
// re-implementation of the forward for measurement, not checked against
// transformers.
func llamaStats(t *testing.T, path string, windows [][]byte, heads, kvHeads int, eps float64) map[string][]float32 {
	t.Helper()
	c := openForTest(t, path)
	weights := map[string][]float32{}
	get := func(name string) []float32 {
		if w, ok := weights[name]; ok {
			return w
		}
		weights[name] = decodeForTest(t, c, name)
		return weights[name]
	}
	embT, _ := c.Tensor("model.embed_tokens.weight")
	hidden := int(embT.Shape[1])
	acc := map[string][]float64{}
	width := map[string]int{}
	add := func(site string, x []float32, n int) {
		tokens := len(x) / n
		xt := make([]float32, n*tokens)
		for r := range tokens {
			for j := range n {
				xt[j*tokens+r] = x[r*n+j]
			}
		}
		g := make([]float32, n*n)
		linalg.Gram(g, xt, n, tokens)
		if acc[site] == nil {
			acc[site], width[site] = make([]float64, n*n), n
		}
		for i, v := range g {
			acc[site][i] += float64(v)
		}
	}
	for _, win := range windows {
		T := len(win)
		emb := get("model.embed_tokens.weight")
		h := make([]float32, T*hidden)
		for r, b := range win {
			copy(h[r*hidden:(r+1)*hidden], emb[int(b)*hidden:(int(b)+1)*hidden])
		}
		norm := func(x, w []float32) []float32 {
			out := make([]float32, len(x))
			for r := range T {
				row := x[r*hidden : (r+1)*hidden]
				var ss float64
				for _, v := range row {
					ss += float64(v) * float64(v)
				}
				s := 1 / math.Sqrt(ss/float64(hidden)+eps)
				for j, v := range row {
					out[r*hidden+j] = float32(float64(v) * s * float64(w[j]))
				}
			}
			return out
		}
		proj := func(x []float32, name string) ([]float32, int) { // x Wᵀ
			tt, _ := c.Tensor(name)
			out, in := int(tt.Shape[0]), int(tt.Shape[1])
			y := make([]float32, T*out)
			linalg.MulBT(y, x, get(name), T, in, out)
			return y, out
		}
		for l := 0; ; l++ {
			p := fmt.Sprintf("model.layers.%d.", l)
			if _, ok := c.Tensor(p + "self_attn.q_proj.weight"); !ok {
				break
			}
			xa := norm(h, get(p+"input_layernorm.weight"))
			add(p+"self_attn.qkv_proj", xa, hidden)
			q, qw := proj(xa, p+"self_attn.q_proj.weight")
			k, kw := proj(xa, p+"self_attn.k_proj.weight")
			v, _ := proj(xa, p+"self_attn.v_proj.weight")
			hd := qw / heads
			rope := func(x []float32, w int) {
				for r := range T {
					for s := 0; s < w; s += hd {
						for i := range hd / 2 {
							ang := float64(r) * math.Pow(10000, -2*float64(i)/float64(hd))
							a, b := float64(x[r*w+s+i]), float64(x[r*w+s+i+hd/2])
							x[r*w+s+i] = float32(a*math.Cos(ang) - b*math.Sin(ang))
							x[r*w+s+i+hd/2] = float32(b*math.Cos(ang) + a*math.Sin(ang))
						}
					}
				}
			}
			rope(q, qw)
			rope(k, kw)
			o := make([]float32, T*qw)
			p64 := make([]float64, T)
			for hq := range heads {
				kv := hq / (heads / kvHeads)
				for r := range T {
					m := math.Inf(-1)
					for s := 0; s <= r; s++ {
						var d float64
						for i := range hd {
							d += float64(q[r*qw+hq*hd+i]) * float64(k[s*kw+kv*hd+i])
						}
						p64[s] = d / math.Sqrt(float64(hd))
						m = max(m, p64[s])
					}
					var z float64
					for s := 0; s <= r; s++ {
						p64[s] = math.Exp(p64[s] - m)
						z += p64[s]
					}
					for s := 0; s <= r; s++ {
						for i := range hd {
							o[r*qw+hq*hd+i] += float32(p64[s] / z * float64(v[s*kw+kv*hd+i]))
						}
					}
				}
			}
			add(p+"self_attn.o_proj", o, qw)
			ao, _ := proj(o, p+"self_attn.o_proj.weight")
			for i := range h {
				h[i] += ao[i]
			}
			xm := norm(h, get(p+"post_attention_layernorm.weight"))
			add(p+"mlp.gate_up_proj", xm, hidden)
			g, inter := proj(xm, p+"mlp.gate_proj.weight")
			u, _ := proj(xm, p+"mlp.up_proj.weight")
			for i, x := range g {
				g[i] = float32(float64(x)/(1+math.Exp(-float64(x)))) * u[i]
			}
			add(p+"mlp.down_proj", g, inter)
			d, _ := proj(g, p+"mlp.down_proj.weight")
			for i := range h {
				h[i] += d[i]
			}
		}
	}
	out := map[string][]float32{}
	for site, a := range acc {
		h := make([]float32, len(a))
		for i, v := range a {
			h[i] = float32(v)
		}
		out[site] = h
	}
	return out
}

// docWindows returns n windows of seq bytes from the Debian copyright files
// of this machine whose index in sorted order has the given parity (0:
// calibration text, 1: held-out text), at a fixed stride: documentation,
// the docs fine-tune's domain.
func docWindows(t *testing.T, parity, n, seq int) [][]byte {
	t.Helper()
	files, err := filepath.Glob("/usr/share/doc/*/copyright")
	require.NoError(t, err)
	var text []byte
	for i, f := range files {
		if i%2 != parity {
			continue
		}
		b, err := os.ReadFile(f)
		if err == nil {
			text = append(append(text, b...), '\n')
		}
	}
	if len(text) < n*seq {
		t.Skip("not enough documentation text on this machine")
	}
	stride := (len(text) - seq) / n
	out := make([][]byte, n)
	for i := range out {
		out[i] = text[i*stride : i*stride+seq]
	}
	return out
}

// TestCalibrationTinyLlamaDocs measures calibration on the shared docs
// pair (DELTACOME_TINY_LLAMA: the folder holding base.safetensors and
// docs.safetensors): statistics of the fine-tune measured on 64 windows of
// 256 bytes of this machine's documentation (even-numbered files), the
// output error judged with statistics of 64 held-out windows (odd-numbered
// files); the H-weighted and plain relative errors of data-free and
// calibrated archives at ratios 16 and 32, measured on the
// reconstructions. It reports; it asserts only that both encode.
func TestCalibrationTinyLlamaDocs(t *testing.T) {
	dir := os.Getenv("DELTACOME_TINY_LLAMA")
	if dir == "" {
		t.Skip("DELTACOME_TINY_LLAMA not set")
	}
	ctx := context.Background()
	base, ft := filepath.Join(dir, "base.safetensors"), filepath.Join(dir, "docs.safetensors")
	const windows, seq = 64, 256
	sites := llamaStats(t, ft, docWindows(t, 0, windows, seq), 6, 2, 1e-5)
	held := llamaStats(t, ft, docWindows(t, 1, windows, seq), 6, 2, 1e-5)
	tokens := windows * seq
	fp, err := Fingerprint(ctx, ft)
	require.NoError(t, err)
	packed := map[string][]float32{}
	for name, h := range sites {
		packed[name] = PackTriangle(h, int(math.Sqrt(float64(len(h)))))
	}
	work := t.TempDir()
	stats := filepath.Join(work, "stats.safetensors")
	require.NoError(t, WriteCalibration(stats, packed, map[string]string{CalibTokensKey: strconv.Itoa(tokens),
		CalibTextKey: "/usr/share/doc/*/copyright (even files)", CalibFingerprintKey: fp}))
	for _, ratio := range []float64{16, 32} {
		for _, calib := range []string{"", stats} {
			opt := deltaOpts(t, ratio, "auto")
			opt.Calibration = calib
			arch := filepath.Join(work, "a.dcm")
			opt.Overwrite = true
			sum, err := Compress(ctx, base, ft, arch, opt)
			require.NoError(t, err)
			out := filepath.Join(work, fmt.Sprintf("out-%g-%t", ratio, calib != ""))
			_, err = Reconstruct(ctx, base, arch, out, ReconstructOptions{})
			require.NoError(t, err)
			r, err := archive.Open(arch)
			require.NoError(t, err)
			e, n := hWeightedPair(t, r.Manifest, sites, base, ft, filepath.Join(out, "docs.safetensors"))
			eh, nh := hWeightedPair(t, r.Manifest, held, base, ft, filepath.Join(out, "docs.safetensors"))
			kept := 0
			for _, rec := range r.Manifest.Tensors {
				if rec.LowRankSym != nil && rec.LowRankSym.Calibration == "calibrated" {
					kept++
				}
			}
			require.NoError(t, r.Close())
			st, err := os.Stat(arch)
			require.NoError(t, err)
			t.Logf("ratio %g calibrated=%t: H-weighted rel error %.4f (calibration text), %.4f (held-out text), plain rel error %.4f, calibrated kept %d, archive %d bytes",
				ratio, calib != "", math.Sqrt(e/n), math.Sqrt(eh/nh), sum.AggRelError, kept, st.Size())
		}
	}
}
