package synth

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// ErrConfig reports a Config that cannot describe a model.
var ErrConfig = errors.New("bad synthetic model settings")

// Config describes the synthetic model pair.
type Config struct {
	// Hidden is the model width: q and o projections are Hidden x Hidden.
	Hidden int
	// Intermediate is the MLP width: gate and up are Intermediate x Hidden,
	// down is Hidden x Intermediate.
	Intermediate int
	// KVHidden is the output width of the k and v projections
	// (heads x head size of the key/value heads); Hidden without GQA.
	KVHidden int
	// Layers is the number of decoder layers.
	Layers int
	// Vocab is the vocabulary size; 0 writes no embedding, final norm or
	// lm_head, only the layers.
	Vocab int
	// WeightStd is the standard deviation of the base weights.
	WeightStd float64
	// DeltaScale is |Delta|_F / |W|_F for every projection.
	DeltaScale float64
	// SignalRank is the number of directions of the structured part of each
	// delta (capped at the matrix's short side).
	SignalRank int
	// Decay is the exponent of the structured singular values, which fall
	// as (1 + j/8)^-Decay for direction j.
	Decay float64
	// NoiseShare is the share of each delta's energy in full-rank noise, in
	// [0, 1].
	NoiseShare float64
	// Seed seeds every random stream.
	Seed uint64
}

// Llama2_7B returns the shape of Llama-2-7B (hidden 4096, MLP 11008, no GQA,
// vocabulary 32000) with layers decoder layers and the default delta
// statistics.
func Llama2_7B(layers int) Config {
	return Config{Hidden: 4096, Intermediate: 11008, KVHidden: 4096, Layers: layers, Vocab: 32000,
		WeightStd: 0.02, DeltaScale: 0.03, SignalRank: 256, Decay: 0.5, NoiseShare: 0.3, Seed: 1}
}

// Tiny returns a small Llama-like shape (hidden 256, MLP 688, k/v 64 wide,
// vocabulary 512) for tests, with the default delta statistics.
func Tiny(layers int) Config {
	return Config{Hidden: 256, Intermediate: 688, KVHidden: 64, Layers: layers, Vocab: 512,
		WeightStd: 0.02, DeltaScale: 0.03, SignalRank: 32, Decay: 0.5, NoiseShare: 0.3, Seed: 1}
}

func (c Config) validate() error {
	switch {
	case c.Hidden < 1 || c.Intermediate < 1 || c.KVHidden < 1 || c.Layers < 0 || c.Vocab < 0:
		return fmt.Errorf("%w: hidden %d, intermediate %d, kv %d, layers %d, vocab %d must be positive (layers, vocab >= 0)",
			ErrConfig, c.Hidden, c.Intermediate, c.KVHidden, c.Layers, c.Vocab)
	case !(c.WeightStd > 0) || !(c.DeltaScale >= 0) || !(c.Decay >= 0) || !(c.NoiseShare >= 0 && c.NoiseShare <= 1) || c.SignalRank < 0:
		return fmt.Errorf("%w: weight std %v, delta scale %v, decay %v, noise share %v, signal rank %d out of range",
			ErrConfig, c.WeightStd, c.DeltaScale, c.Decay, c.NoiseShare, c.SignalRank)
	case c.Layers == 0 && c.Vocab == 0:
		return fmt.Errorf("%w: no layers and no vocabulary: nothing to write", ErrConfig)
	}
	return nil
}

// kind says how a tensor is generated.
type kind int

const (
	kindProjection kind = iota // Gaussian base, low-rank-plus-noise delta
	kindNorm                   // near-1 vector, small change
	kindEmbedding              // Gaussian rows, small change
)

// tensorSpec is one tensor to write.
type tensorSpec struct {
	name       string
	rows, cols int // cols == 0 for vectors
	kind       kind
}

func (t tensorSpec) shape() []uint64 {
	if t.cols == 0 {
		return []uint64{uint64(t.rows)}
	}
	return []uint64{uint64(t.rows), uint64(t.cols)}
}

func (t tensorSpec) len() int { return t.rows * max(t.cols, 1) }

// Tensors returns the names and shapes the config describes, in file order
// (sorted by name, as Hugging Face writes them).
func (c Config) tensors() []tensorSpec {
	var ts []tensorSpec
	h, im, kv := c.Hidden, c.Intermediate, c.KVHidden
	for l := range c.Layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		ts = append(ts,
			tensorSpec{p + "self_attn.q_proj.weight", h, h, kindProjection},
			tensorSpec{p + "self_attn.k_proj.weight", kv, h, kindProjection},
			tensorSpec{p + "self_attn.v_proj.weight", kv, h, kindProjection},
			tensorSpec{p + "self_attn.o_proj.weight", h, h, kindProjection},
			tensorSpec{p + "mlp.gate_proj.weight", im, h, kindProjection},
			tensorSpec{p + "mlp.up_proj.weight", im, h, kindProjection},
			tensorSpec{p + "mlp.down_proj.weight", h, im, kindProjection},
			tensorSpec{p + "input_layernorm.weight", h, 0, kindNorm},
			tensorSpec{p + "post_attention_layernorm.weight", h, 0, kindNorm},
		)
	}
	if c.Vocab > 0 {
		ts = append(ts,
			tensorSpec{"model.embed_tokens.weight", c.Vocab, h, kindEmbedding},
			tensorSpec{"lm_head.weight", c.Vocab, h, kindEmbedding},
			tensorSpec{"model.norm.weight", h, 0, kindNorm},
		)
	}
	slices.SortFunc(ts, func(a, b tensorSpec) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return ts
}

// Write writes the pair under dir: dir/base and dir/ft, each a Hugging Face
// style folder with model.safetensors and config.json. Existing files of
// those names are replaced; each file is written under a temporary name and
// renamed when complete. workers bounds the goroutines generating rows (< 1:
// GOMAXPROCS); the bytes written do not depend on it.
func Write(ctx context.Context, dir string, c Config, workers int) error {
	if err := c.validate(); err != nil {
		return err
	}
	if workers < 1 {
		workers = runtime.GOMAXPROCS(0)
	}
	ts := c.tensors()
	infos := make([]stfile.Info, len(ts))
	for i, t := range ts {
		infos[i] = stfile.Info{Name: t.name, DType: safetensors.BF16, Shape: t.shape()}
	}
	header, err := stfile.EncodeHeader(infos, map[string]string{"format": "pt"})
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	var outs [2]*output
	for i, side := range []string{"base", "ft"} {
		if outs[i], err = createOutput(filepath.Join(dir, side), header); err != nil {
			return err
		}
		defer outs[i].abort()
	}
	g := generator{c: c, workers: workers}
	for i, t := range ts {
		if err := ctx.Err(); err != nil {
			return err
		}
		base, ft := g.tensor(i, t)
		for j, v := range [2][]float32{base, ft} {
			if err := outs[j].write(v); err != nil {
				return err
			}
		}
	}
	cfgJSON, err := json.MarshalIndent(c.hfConfig(), "", "  ")
	if err != nil {
		return fmt.Errorf("config.json: %w", err)
	}
	for _, o := range outs {
		if err := o.commit(append(cfgJSON, '\n')); err != nil {
			return err
		}
	}
	return nil
}

// hfConfig is the config.json written beside the weights.
func (c Config) hfConfig() map[string]any {
	heads := max(c.Hidden/128, 1)
	return map[string]any{
		"architectures":            []string{"LlamaForCausalLM"},
		"model_type":               "llama",
		"hidden_size":              c.Hidden,
		"intermediate_size":        c.Intermediate,
		"num_hidden_layers":        c.Layers,
		"num_attention_heads":      heads,
		"num_key_value_heads":      max(heads*c.KVHidden/c.Hidden, 1),
		"vocab_size":               c.Vocab,
		"torch_dtype":              "bfloat16",
		"deltacome_synthetic_seed": c.Seed,
	}
}

// output is one checkpoint folder being written.
type output struct {
	dir, tmp string
	f        *os.File
	w        *bufio.Writer
	buf      []byte
}

func createOutput(dir string, header []byte) (*output, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	f, err := os.CreateTemp(dir, ".model.safetensors.tmp-*")
	if err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	o := &output{dir: dir, tmp: f.Name(), f: f, w: bufio.NewWriterSize(f, 1<<20)}
	if err := f.Chmod(0o644); err != nil { // CreateTemp makes it 0600
		o.abort()
		return nil, fmt.Errorf("%w", err)
	}
	if err := stfile.WriteHeader(o.w, header); err != nil {
		o.abort()
		return nil, fmt.Errorf("write %s: %w", o.tmp, err)
	}
	return o, nil
}

func (o *output) write(v []float32) error {
	if cap(o.buf) < 2*len(v) {
		o.buf = make([]byte, 2*len(v))
	}
	b := o.buf[:2*len(v)]
	if err := dtype.Encode(b, v, safetensors.BF16); err != nil {
		return fmt.Errorf("%w", err)
	}
	if _, err := o.w.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", o.tmp, err)
	}
	return nil
}

// commit flushes and renames the weights and writes config.json.
func (o *output) commit(cfgJSON []byte) error {
	err := o.w.Flush()
	if err == nil {
		err = o.f.Sync()
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	o.f = nil
	if err == nil {
		err = os.Rename(o.tmp, filepath.Join(o.dir, "model.safetensors"))
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(o.dir, "config.json"), cfgJSON, 0o644)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", o.dir, err)
	}
	return nil
}

// abort removes an unfinished output; a no-op after commit.
func (o *output) abort() {
	if o.f != nil {
		_ = o.f.Close()
		_ = os.Remove(o.tmp)
		o.f = nil
	}
}

// generator produces tensors, reusing its buffers.
type generator struct {
	c        Config
	workers  int
	base, ft []float32
}

// rowBlock is the number of rows drawn from one PCG stream: streams are
// keyed by (seed, tensor, block), so the output does not depend on how
// blocks are spread over workers.
const rowBlock = 64

// stream returns the PCG stream of one row block of one tensor.
func (g *generator) stream(tensor, block, purpose int) *rand.Rand {
	return rand.New(rand.NewPCG(g.c.Seed, uint64(tensor)<<40|uint64(purpose)<<32|uint64(block)))
}

// Random stream purposes.
const (
	purposeBase = iota
	purposeNoise
	purposeLeft
	purposeRight
	purposeChange
)

// parallelRows calls fn(r0, r1) for every rowBlock of [0, rows) on up to
// g.workers goroutines.
func (g *generator) parallelRows(rows int, fn func(block, r0, r1 int)) {
	nBlocks := (rows + rowBlock - 1) / rowBlock
	var wg sync.WaitGroup
	next := make(chan int, nBlocks)
	for b := range nBlocks {
		next <- b
	}
	close(next)
	for range min(g.workers, nBlocks) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range next {
				fn(b, b*rowBlock, min((b+1)*rowBlock, rows))
			}
		}()
	}
	wg.Wait()
}

// tensor returns the base and fine-tune values of tensor i (buffers reused
// by the next call).
func (g *generator) tensor(i int, t tensorSpec) (base, ft []float32) {
	n := t.len()
	if cap(g.base) < n {
		g.base, g.ft = make([]float32, n), make([]float32, n)
	}
	base, ft = g.base[:n], g.ft[:n]
	cols := max(t.cols, 1)
	switch t.kind {
	case kindNorm:
		r := g.stream(i, 0, purposeBase)
		for j := range base {
			base[j] = float32(1 + 0.05*r.NormFloat64())
			ft[j] = base[j] + float32(0.01*r.NormFloat64())
		}
	case kindEmbedding:
		g.parallelRows(t.rows, func(b, r0, r1 int) {
			r := g.stream(i, b, purposeBase)
			for j := r0 * cols; j < r1*cols; j++ {
				base[j] = float32(g.c.WeightStd * r.NormFloat64())
				ft[j] = base[j] + float32(g.c.DeltaScale*g.c.WeightStd*r.NormFloat64())
			}
		})
	case kindProjection:
		g.projection(i, t.rows, t.cols, base, ft)
	}
	return base, ft
}

// projection fills base with Gaussian weights and ft with base + Delta,
// Delta = a·X diag(d) Yᵀ + b·N (see the package documentation).
func (g *generator) projection(i, rows, cols int, base, ft []float32) {
	c := g.c
	r := min(c.SignalRank, rows, cols)
	// Structured part S = X diag(d) Yᵀ with Gaussian X (rows x r) and Y
	// (cols x r): columns of independent Gaussians are orthogonal to about
	// 1/sqrt(dim), so S's singular values follow d closely.
	d := make([]float64, r)
	var sigEnergy float64
	for j := range d {
		d[j] = math.Pow(1+float64(j)/8, -c.Decay)
		sigEnergy += d[j] * d[j]
	}
	yt := make([]float32, r*cols) // Yᵀ, r x cols, entries N(0, 1/cols)
	ry := g.stream(i, 0, purposeRight)
	for j := range yt {
		yt[j] = float32(ry.NormFloat64() / math.Sqrt(float64(cols)))
	}
	// With X entries N(0, 1/rows) too, E|S|² = Σ d² and E|N|² = rows·cols
	// for unit-variance noise; the target is |Delta|² = (scale·|W|)² with
	// E|W|² = rows·cols·std².
	target := c.DeltaScale * c.DeltaScale * float64(rows*cols) * c.WeightStd * c.WeightStd
	a, b := 0.0, math.Sqrt(target*c.NoiseShare/float64(rows*cols))
	if r > 0 {
		a = math.Sqrt(target * (1 - c.NoiseShare) / sigEnergy)
	} else {
		b = math.Sqrt(target / float64(rows*cols))
	}
	g.parallelRows(rows, func(blk, r0, r1 int) {
		rb, rn, rx := g.stream(i, blk, purposeBase), g.stream(i, blk, purposeNoise), g.stream(i, blk, purposeLeft)
		coef := make([]float32, r)
		acc := make([]float32, cols)
		for row := r0; row < r1; row++ {
			for j := range coef {
				coef[j] = float32(a * d[j] * rx.NormFloat64() / math.Sqrt(float64(rows)))
			}
			clear(acc)
			for j, cj := range coef {
				axpy(acc, cj, yt[j*cols:(j+1)*cols])
			}
			w, f := base[row*cols:(row+1)*cols], ft[row*cols:(row+1)*cols]
			for k := range w {
				w[k] = float32(c.WeightStd * rb.NormFloat64())
				f[k] = w[k] + acc[k] + float32(b*rn.NormFloat64())
			}
		}
	})
}

// axpy adds alpha·x to y (same length), four elements per step.
func axpy(y []float32, alpha float32, x []float32) {
	x = x[:len(y)]
	k := 0
	for ; k+4 <= len(y); k += 4 {
		y[k] += alpha * x[k]
		y[k+1] += alpha * x[k+1]
		y[k+2] += alpha * x[k+2]
		y[k+3] += alpha * x[k+3]
	}
	for ; k < len(y); k++ {
		y[k] += alpha * x[k]
	}
}
