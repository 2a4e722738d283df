package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/gonum/mat"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// optimalSlack is the bound on the adapter's error: within 3% of the
// optimal rank-r truncation (Eckart-Young) of each delta.
const optimalSlack = 1.03

// roundingTol bounds what rounding the factors to the stored dtype adds to
// the relative error, on top of optimalSlack. With u the dtype's unit
// roundoff (2^-8 for bf16's 8 significant bits, 2^-11 for f16, 2^-24 for
// f32), each stored entry is x (1 + d), |d| <= u, so B~ = B + E with
// |E_oj| <= u |B_oj|. The columns of B = U sqrt(S) are orthogonal with
// norms^2 s_j, as are the rows of A, hence |E A|_F^2 = sum_j s_j |E_j|^2
// <= u^2 sum_j s_j^2 = u^2 |B A|_F^2 <= u^2 |Delta|_F^2, and the same for
// B F: rounding moves B A by at most 2u |Delta|_F (second-order terms
// aside). f32 gets 1e-5 instead: the singular vectors themselves are
// float32, accurate to a few 1e-7 each. Measured on the tiny pair: at most
// 2.4e-3 for bf16, where a projection keeps its full rank.
var roundingTol = map[safetensors.DType]float64{safetensors.BF16: 2 * 0x1p-8, safetensors.F16: 2 * 0x1p-11, safetensors.F32: 1e-5}

func loraOpts(rank int) LoRAOptions {
	return LoRAOptions{Rank: rank, DType: safetensors.BF16}
}

// readAdapter opens the adapter in dir and decodes its config.
func readAdapter(t *testing.T, dir string) (*stfile.File, AdapterConfig, map[string]any) {
	t.Helper()
	f, err := stfile.Open(filepath.Join(dir, AdapterWeightsFile))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	raw, err := os.ReadFile(filepath.Join(dir, AdapterConfigFile))
	require.NoError(t, err)
	var cfg AdapterConfig
	require.NoError(t, json.Unmarshal(raw, &cfg))
	var fields map[string]any
	require.NoError(t, json.Unmarshal(raw, &fields))
	return f, cfg, fields
}

func TestExportLoRALayout(t *testing.T) {
	out := filepath.Join(t.TempDir(), "adapter")
	res, err := ExportLoRA(context.Background(), tinyBase, tinyFT, out, loraOpts(16))
	require.NoError(t, err)
	f, cfg, fields := readAdapter(t, out)

	ft, err := checkpoint.Open(tinyFT)
	require.NoError(t, err)
	defer ft.Close()
	require.Len(t, res.Modules, 28, "7 projections in each of 4 layers")
	assert.Equal(t, 2*len(res.Modules), f.Len())
	for _, m := range res.Modules {
		w, ok := ft.Tensor(m.Module + ".weight")
		require.True(t, ok, m.Module)
		out, in := w.Shape[0], w.Shape[1]
		a, okA := f.Info("base_model.model." + m.Module + ".lora_A.weight")
		b, okB := f.Info("base_model.model." + m.Module + ".lora_B.weight")
		require.True(t, okA && okB, m.Module)
		assert.Equal(t, []uint64{16, in}, a.Shape, "lora_A is r x in")
		assert.Equal(t, []uint64{out, 16}, b.Shape, "lora_B is out x r")
		assert.Equal(t, safetensors.BF16, a.DType)
		assert.Equal(t, safetensors.BF16, b.DType)
		assert.Equal(t, a.Size+b.Size, m.Bytes)
	}
	assert.Equal(t, "pt", f.Metadata()["format"], "transformers' loader wants the format PEFT writes")
	st, err := os.Stat(filepath.Join(out, AdapterWeightsFile))
	require.NoError(t, err)
	assert.Equal(t, st.Size(), res.AdapterBytes)

	assert.Equal(t, "LORA", cfg.PeftType)
	assert.Equal(t, "CAUSAL_LM", cfg.TaskType)
	assert.Equal(t, 16, cfg.R)
	assert.Equal(t, 16, cfg.LoraAlpha, "scaling lora_alpha / r is 1")
	assert.Equal(t, []string{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}, cfg.TargetModules)
	assert.Equal(t, "none", cfg.Bias)
	assert.False(t, cfg.FanInFanOut)
	assert.Nil(t, cfg.BaseModelNameOrPath, "the tiny base's config.json has no _name_or_path")
	assert.Empty(t, cfg.RankPattern)
	assert.Contains(t, fields, "modules_to_save")
	assert.Nil(t, fields["modules_to_save"])
	assert.Nil(t, fields["base_model_name_or_path"])

	// Byte-identical whatever the worker count.
	again := filepath.Join(t.TempDir(), "adapter")
	opt := loraOpts(16)
	opt.Workers = 1
	_, err = ExportLoRA(context.Background(), tinyBase, tinyFT, again, opt)
	require.NoError(t, err)
	for _, name := range []string{AdapterWeightsFile, AdapterConfigFile} {
		want, err := os.ReadFile(filepath.Join(out, name))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(again, name))
		require.NoError(t, err)
		assert.Equal(t, want, got, name)
	}

	plan, err := PlanLoRA(tinyBase, tinyFT, loraOpts(16))
	require.NoError(t, err)
	assert.Equal(t, res.AdapterBytes, plan.AdapterBytes, "the dry run predicts the file to the byte when nothing else is saved")
	assert.Equal(t, res.Config, plan.Config)
}

// optimalError returns the relative error of the best rank-r approximation
// of the rows x cols matrix d: the norm of its discarded singular values
// over the norm of all, from gonum's full SVD (independent of linalg).
func optimalError(t *testing.T, d []float32, rows, cols, r int) float64 {
	t.Helper()
	data := make([]float64, len(d))
	for i, x := range d {
		data[i] = float64(x)
	}
	var svd mat.SVD
	require.True(t, svd.Factorize(mat.NewDense(rows, cols, data), mat.SVDNone))
	var all, dropped float64
	for i, s := range svd.Values(nil) {
		all += s * s
		if i >= r {
			dropped += s * s
		}
	}
	return math.Sqrt(dropped / all)
}

// storedError recomputes |Delta - B A|_F / |Delta|_F from the adapter file.
func storedError(t *testing.T, f *stfile.File, module string, delta []float32, out, in int) float64 {
	t.Helper()
	decode := func(suffix string) ([]float32, []uint64) {
		info, ok := f.Info("base_model.model." + module + suffix)
		require.True(t, ok)
		raw, err := f.Data(info.Name)
		require.NoError(t, err)
		x := make([]float32, int(info.Size)/int(info.DType.Size()))
		require.NoError(t, dtype.Decode(x, raw, info.DType))
		return x, info.Shape
	}
	a, aShape := decode(".lora_A.weight")
	b, _ := decode(".lora_B.weight")
	r := int(aShape[0])
	var errSq, normSq float64
	for o := range out {
		for i := range in {
			var p float64
			for j := range r {
				p += float64(b[o*r+j]) * float64(a[j*in+i])
			}
			d := float64(delta[o*in+i])
			errSq += (d - p) * (d - p)
			normSq += d * d
		}
	}
	return math.Sqrt(errSq / normSq)
}

// ftDelta returns the fine-tune's delta of a tensor in float32.
func ftDelta(t *testing.T, base, ft *checkpoint.Checkpoint, name string, n int) []float32 {
	t.Helper()
	w, _ := ft.Tensor(name)
	bw, _ := base.Tensor(name)
	data, err := ft.Data(name)
	require.NoError(t, err)
	bdata, err := base.Data(name)
	require.NoError(t, err)
	d := make([]float32, n)
	require.NoError(t, svdquant.Delta(d, data, w.DType, bdata, bw.DType))
	return d
}

// sumSq returns the sum of squares of x.
func sumSq(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s
}

// openTinyPair opens the bundled base and fine-tune, closed when the test
// ends.
func openTinyPair(t *testing.T) (base, ft *checkpoint.Checkpoint) {
	t.Helper()
	base, err := checkpoint.Open(tinyBase)
	require.NoError(t, err)
	t.Cleanup(func() { base.Close() })
	ft, err = checkpoint.Open(tinyFT)
	require.NoError(t, err)
	t.Cleanup(func() { ft.Close() })
	return base, ft
}

func TestExportLoRANearOptimal(t *testing.T) {
	base, ft := openTinyPair(t)
	for _, tc := range []struct {
		rank int
		dt   safetensors.DType
	}{{8, safetensors.BF16}, {128, safetensors.BF16}, {32, safetensors.F16}, {32, safetensors.F32}} {
		t.Run(fmt.Sprintf("%s rank %d", tc.dt, tc.rank), func(t *testing.T) {
			if testing.Short() && tc.rank != 8 {
				t.Skip("one export is enough under -short")
			}
			out := filepath.Join(t.TempDir(), "adapter")
			opt := loraOpts(tc.rank)
			opt.DType = tc.dt
			res, err := ExportLoRA(context.Background(), tinyBase, tinyFT, out, opt)
			require.NoError(t, err)
			f, _, _ := readAdapter(t, out)
			for _, m := range res.Modules {
				delta := ftDelta(t, base, ft, m.Tensor, m.Out*m.In)

				optimal := optimalError(t, delta, m.Out, m.In, m.Rank)
				// Energies, not errors: sqrt(1 - kept) magnifies float32 rounding
				// of the singular values where nearly all is kept.
				assert.InDelta(t, 1-optimal*optimal, m.EnergyKept, 1e-6, "%s: energy kept is that of the top-r singular values", m.Module)
				assert.GreaterOrEqual(t, m.RelError, optimal-1e-6, "%s: nothing beats the truncated SVD", m.Module)
				assert.LessOrEqual(t, m.RelError, optimalSlack*optimal+roundingTol[tc.dt], "%s: error %.5f, optimal %.5f", m.Module, m.RelError, optimal)
				assert.InDelta(t, storedError(t, f, m.Module, delta, m.Out, m.In), m.RelError, 1e-5, "%s: the error reported is that of the stored factors", m.Module)
			}
			t.Logf("rank %d %s: aggregate error %.4f, energy kept %.4f, %d bytes", tc.rank, tc.dt, res.RelError, res.EnergyKept, res.AdapterBytes)
		})
	}
}

func TestExportLoRARefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	notEmpty := filepath.Join(dir, "full")
	require.NoError(t, os.Mkdir(notEmpty, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(notEmpty, "x"), []byte("x"), 0o644))
	for _, tc := range []struct {
		name string
		out  string
		opt  LoRAOptions
		want error
	}{
		{"rank 0", filepath.Join(dir, "a"), loraOpts(0), ErrUsage},
		{"negative rank", filepath.Join(dir, "b"), loraOpts(-4), ErrUsage},
		{"rank above every matrix", filepath.Join(dir, "c"), loraOpts(1025), ErrUsage},
		{"negative mlp rank", filepath.Join(dir, "d"), LoRAOptions{Rank: 4, RankMLP: -1, DType: safetensors.BF16}, ErrUsage},
		{"bad dtype", filepath.Join(dir, "e"), LoRAOptions{Rank: 4, DType: safetensors.I32}, ErrUsage},
		{"outdir not empty", notEmpty, loraOpts(8), ErrExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ExportLoRA(ctx, tinyBase, tinyFT, tc.out, tc.opt)
			require.ErrorIs(t, err, tc.want)
			if tc.out != notEmpty {
				assert.NoDirExists(t, tc.out)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "nothing written, no temporary folder left")
	names, err := os.ReadDir(notEmpty)
	require.NoError(t, err)
	assert.Len(t, names, 1, "an existing folder is left as it was")
}

func TestExportLoRARanks(t *testing.T) {
	out := filepath.Join(t.TempDir(), "adapter")
	opt := loraOpts(200) // k_proj and v_proj are 128 x 384: clamped to 128
	opt.RankMLP = 24
	res, err := ExportLoRA(context.Background(), tinyBase, tinyFT, out, opt)
	require.NoError(t, err)
	_, cfg, _ := readAdapter(t, out)
	assert.Equal(t, 200, cfg.R, "r is the largest rank")
	assert.Equal(t, 200, cfg.LoraAlpha)
	for _, m := range res.Modules {
		want := 200
		switch m.Role {
		case "k", "v":
			want = 128
			assert.Less(t, m.RelError, roundingTol[safetensors.BF16], "%s: full rank carries the delta up to bf16 rounding", m.Module)
		case "gate", "up", "down":
			want = 24
		}
		assert.Equal(t, want, m.Rank, m.Module)
		if want != cfg.R {
			key := strings.TrimPrefix(m.Module, "model.")
			assert.Equal(t, want, cfg.RankPattern[key], m.Module)
			assert.Equal(t, want, cfg.AlphaPattern[key], "%s: alpha = rank keeps the scaling 1", m.Module)
			// PEFT matches keys as regular expressions, (.*\.)?key$ in
			// recent releases and .*\.key$ in older ones: each must pick
			// its module alone.
			for _, other := range res.Modules {
				newer := regexp.MustCompile(`^(.*\.)?(` + key + `)$`).MatchString(other.Module)
				older := regexp.MustCompile(`^.*\.` + key + `$`).MatchString(other.Module)
				assert.Equal(t, other.Module == m.Module, newer, "%s against %s", key, other.Module)
				assert.Equal(t, other.Module == m.Module, older, "%s against %s", key, other.Module)
			}
		} else {
			assert.NotContains(t, cfg.RankPattern, strings.TrimPrefix(m.Module, "model."))
		}
	}
	var codes []string
	for _, w := range res.Warnings {
		codes = append(codes, w.Code)
	}
	assert.Contains(t, codes, WarnRankClamped)
	assert.NotContains(t, codes, WarnVLLMRank)
}

// writeFolder writes a folder checkpoint of the given tensors and config.json.
func writeFolder(t *testing.T, ts map[string]tensorSpec, config string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Rename(writeCheckpoint(t, ts), filepath.Join(dir, "model.safetensors")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o644))
	return dir
}

// TestExportLoRAConv1D checks GPT-2's layout: the weight is stored
// [in, out], PEFT's lora_A is still r x in and lora_B out x r, with
// fan_in_fan_out set, and B A is the transpose of the stored delta.
func TestExportLoRAConv1D(t *testing.T) {
	const in, out, rank = 12, 20, 3
	rng := rand.New(rand.NewPCG(15, 1))
	w := make([]float32, in*out)
	d := make([]float32, in*out) // stored [in, out], of rank `rank`
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for range rank {
		u, v := make([]float32, in), make([]float32, out)
		for i := range u {
			u[i] = float32(rng.NormFloat64())
		}
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		for i := range in {
			for o := range out {
				d[i*out+o] += u[i] * v[o] / 8
			}
		}
	}
	ftW := make([]float32, len(w))
	for i := range w {
		ftW[i] = w[i] + d[i]
	}
	const name = "transformer.h.0.attn.c_attn.weight"
	norm := []float32{1, 1}
	cfg := `{"model_type": "gpt2", "_name_or_path": "openai-community/gpt2"}`
	base := writeFolder(t, map[string]tensorSpec{name: {safetensors.F32, []uint64{in, out}, w}, "transformer.ln_f.weight": {safetensors.F32, []uint64{2}, norm}}, cfg)
	ft := writeFolder(t, map[string]tensorSpec{name: {safetensors.F32, []uint64{in, out}, ftW}, "transformer.ln_f.weight": {safetensors.F32, []uint64{2}, []float32{1, 2}}}, cfg)

	dir := filepath.Join(t.TempDir(), "adapter")
	opt := LoRAOptions{Rank: rank, DType: safetensors.F32, ModulesToSave: true}
	res, err := ExportLoRA(context.Background(), base, ft, dir, opt)
	require.NoError(t, err)
	require.True(t, res.Conv1D)
	f, c, _ := readAdapter(t, dir)
	assert.True(t, c.FanInFanOut)
	require.NotNil(t, c.BaseModelNameOrPath)
	assert.Equal(t, "openai-community/gpt2", *c.BaseModelNameOrPath)
	assert.Equal(t, []string{"c_attn"}, c.TargetModules)
	a, _ := f.Info("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight")
	b, _ := f.Info("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")
	assert.Equal(t, []uint64{rank, in}, a.Shape)
	assert.Equal(t, []uint64{out, rank}, b.Shape)
	// B A (out x in) against the stored delta transposed.
	dt := make([]float32, out*in)
	for i := range in {
		for o := range out {
			dt[o*in+i] = d[i*out+o]
		}
	}
	assert.Less(t, storedError(t, f, "transformer.h.0.attn.c_attn", dt, out, in), 1e-5, "an exactly rank-3 delta is carried to f32 rounding")
	assert.Less(t, res.Modules[0].RelError, 1e-5)

	// The changed norm goes in whole, under PEFT's modules_to_save name.
	assert.Equal(t, []string{"transformer.ln_f"}, c.ModulesToSave)
	saved, ok := f.Info("base_model.model.transformer.ln_f.weight")
	require.True(t, ok)
	raw, err := f.Data(saved.Name)
	require.NoError(t, err)
	got := make([]float32, 2)
	require.NoError(t, dtype.Decode(got, raw, saved.DType))
	assert.Equal(t, []float32{1, 2}, got, "saved bit-exact from the fine-tune")
	require.Len(t, res.Others, 1)
	assert.True(t, res.Others[0].Saved)
	var codes []string
	for _, w := range res.Warnings {
		codes = append(codes, w.Code)
	}
	assert.Contains(t, codes, WarnModulesToSave)
	assert.False(t, strings.Contains(strings.Join(codes, ","), WarnLeftOut))
}
