package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/nlpodyssey/safetensors"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// The files of a PEFT adapter folder, as PEFT's save_pretrained names them.
const (
	AdapterWeightsFile = "adapter_model.safetensors"
	AdapterConfigFile  = "adapter_config.json"
)

// VLLMMaxRank is the largest LoRA rank vLLM serves: its --max-lora-rank
// choices end at 512, and it refuses an adapter whose r is above the
// server's setting.
const VLLMMaxRank = 512

// peftPrefix is what PEFT puts before a module path in an adapter's tensor
// names: the PeftModel's base_model (a LoraModel) and its model.
const peftPrefix = "base_model.model."

// Warning codes of ExportLoRA and PlanLoRA (Warning.Code).
const (
	// WarnRankClamped: the asked rank is above min(out, in) of some
	// matrices; they get their full rank, an exact copy of their delta.
	WarnRankClamped = "rank-clamped"
	// WarnVLLMRank: the adapter's r is above VLLMMaxRank.
	WarnVLLMRank = "vllm-rank"
	// WarnLeftOut: tensors outside the projections changed; a LoRA does not
	// carry them.
	WarnLeftOut = "left-out"
	// WarnModulesToSave: the adapter carries full tensors as
	// modules_to_save, which vLLM refuses.
	WarnModulesToSave = "modules-to-save"
	// WarnNoBaseName: the base's config.json names no model, so the
	// adapter's base_model_name_or_path is null.
	WarnNoBaseName = "no-base-name"
	// WarnLargerThanDelta: some factors take more bytes than their delta
	// stored whole in the same dtype: r (out + in) >= out in.
	WarnLargerThanDelta = "larger-than-delta"
	// WarnConv1DAssumed: no config.json tells the architecture; GPT-2 names
	// were taken for Conv1D weights stored [in, out].
	WarnConv1DAssumed = "conv1d-assumed"
)

// LoRAOptions configures ExportLoRA and PlanLoRA.
type LoRAOptions struct {
	// Rank is the rank of every exported projection, >= 1; a matrix whose
	// min(out, in) is smaller gets that instead.
	Rank int
	// RankAttn and RankMLP replace Rank for the attention (q, k, v, qkv, o)
	// and MLP (gate, up, down) projections when > 0 (roles: Role).
	RankAttn, RankMLP int
	// DType is the factors' dtype: BF16, F16 or F32.
	DType safetensors.DType
	// ModulesToSave puts the changed tensors outside the projections in
	// the adapter whole, as PEFT's modules_to_save.
	ModulesToSave bool
	// SVD selects the truncated SVD route (zero value: auto).
	SVD linalg.Route
	// Workers bounds the tensors processed at once; < 1 sizes the pool from
	// the cores and memory.
	Workers int
	// Progress receives per-tensor events; nil means none.
	Progress Progress
}

func (o *LoRAOptions) validate() error {
	if o.Rank < 1 {
		return errorf(ErrUsage, "--rank must be >= 1, got %d", o.Rank)
	}
	if o.RankAttn < 0 || o.RankMLP < 0 {
		return errorf(ErrUsage, "--rank-attn and --rank-mlp must be >= 1 when given, got %d and %d", o.RankAttn, o.RankMLP)
	}
	switch o.DType {
	case safetensors.BF16, safetensors.F16, safetensors.F32:
	default:
		return errorf(ErrUsage, "factor dtype must be BF16, F16 or F32, got %s", o.DType)
	}
	return nil
}

// rankFor returns the asked rank of a projection of the given role.
func (o *LoRAOptions) rankFor(role string) int {
	switch role {
	case "q", "k", "v", "qkv", "o":
		if o.RankAttn > 0 {
			return o.RankAttn
		}
	case "gate", "up", "down":
		if o.RankMLP > 0 {
			return o.RankMLP
		}
	}
	return o.Rank
}

// LoRAModule is one projection of the adapter.
type LoRAModule struct {
	// Tensor is the weight's name in the fine-tune; Module the module path
	// PEFT targets (Tensor without ".weight").
	Tensor, Module string
	// Role is the projection family (Role).
	Role string
	// Out and In are the layer's out_features and in_features: lora_B is
	// Out x Rank, lora_A Rank x In.
	Out, In int
	// Rank is the factors' rank; AskedRank the rank asked for its role.
	Rank, AskedRank int
	// Bytes is the size of lora_A and lora_B together.
	Bytes int64
	// OrigBytes is the weight's size in the fine-tune.
	OrigBytes int64
	// DeltaNorm is |Delta|_F; EnergyKept the kept singular values' share of
	// |Delta|_F^2; TruncError sqrt(1 - EnergyKept), the error of the
	// unrounded rank-Rank truncation; RelError |Delta - B A|_F / |Delta|_F
	// measured on the stored factors. Zero in a plan.
	DeltaNorm, EnergyKept, TruncError, RelError float64
	// ArchiveRelError is, from an archive, the error its stored delta has
	// against the fine-tune's (recorded by compress): DeltaNorm and the
	// errors above are of the archive's delta. 0 otherwise.
	ArchiveRelError float64
}

// LoRAOther is a changed tensor outside the exported projections.
type LoRAOther struct {
	Name  string
	DType string
	Shape []uint64
	Role  string
	// Bytes is the tensor's size in the fine-tune.
	Bytes int64
	// DeltaNormSq is |Delta|_F^2; Share its part of the delta energy of
	// every changed tensor. Both are 0 for a tensor absent from the base.
	DeltaNormSq, Share float64
	// Why says why a LoRA cannot carry it.
	Why string
	// Saved reports that the adapter holds it as modules_to_save.
	Saved bool
}

// AdapterConfig is adapter_config.json as PEFT's LoraConfig reads it.
type AdapterConfig struct {
	PeftType            string         `json:"peft_type"`
	TaskType            string         `json:"task_type"`
	BaseModelNameOrPath *string        `json:"base_model_name_or_path"`
	R                   int            `json:"r"`
	LoraAlpha           int            `json:"lora_alpha"`
	LoraDropout         float64        `json:"lora_dropout"`
	TargetModules       []string       `json:"target_modules"`
	ModulesToSave       []string       `json:"modules_to_save"`
	RankPattern         map[string]int `json:"rank_pattern"`
	AlphaPattern        map[string]int `json:"alpha_pattern"`
	Bias                string         `json:"bias"`
	FanInFanOut         bool           `json:"fan_in_fan_out"`
	InferenceMode       bool           `json:"inference_mode"`
	UseRSLoRA           bool           `json:"use_rslora"`
	UseDoRA             bool           `json:"use_dora"`
	InitLoraWeights     bool           `json:"init_lora_weights"`
}

// LoRAResult is what ExportLoRA wrote, or what PlanLoRA would write.
type LoRAResult struct {
	// Modules lists the exported projections in fine-tune order.
	Modules []LoRAModule
	// Unchanged lists the selected projections equal to their base: the
	// adapter has no factors for them (never filled by PlanLoRA).
	Unchanged []string
	// Others lists the changed tensors outside Modules, saved or left out
	// (never filled by PlanLoRA).
	Others []LoRAOther
	// Config is the adapter_config.json written.
	Config AdapterConfig
	// Conv1D reports projections stored [in, out] (GPT-2's Conv1D).
	Conv1D bool
	// LoRABytes totals the factors, SavedBytes the modules_to_save tensors;
	// HeaderBytes is the safetensors header (length prefix included) and
	// AdapterBytes the adapter_model.safetensors file's size.
	LoRABytes, SavedBytes, HeaderBytes, AdapterBytes int64
	// RelError is sqrt(sum err^2 / sum |Delta|^2) over Modules, EnergyKept
	// sum kept sigma^2 / sum |Delta|^2, ArchiveRelError the aggregate of
	// the modules' ArchiveRelError (from an archive only).
	RelError, EnergyKept, ArchiveRelError float64
	// FromArchive reports an adapter made from an archive.
	FromArchive bool
	// ProjShare is the projections' part of the delta energy of every
	// changed tensor.
	ProjShare float64
	Warnings  []Warning
}

// loraLayout is what the headers tell: the modules and their ranks.
type loraLayout struct {
	modules  []LoRAModule
	byName   map[string]int // tensor name -> index in modules
	conv1D   bool
	baseName string
	weights  []string // the fine-tune's 2-D tensors
	config   AdapterConfig
	warns    []Warning
}

// conv1DModelTypes lists the config.json model_type values of architectures
// whose projections are transformers' Conv1D, the weight stored [in, out]:
// PEFT turns fan_in_fan_out on for them.
var conv1DModelTypes = []string{"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}

// gpt2Conv1DName matches GPT-2's Conv1D projection names, the guess when
// no config.json gives the model type.
var gpt2Conv1DName = regexp.MustCompile(`(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$`)

// baseModelConfig is what ExportLoRA reads of the base's config.json.
type baseModelConfig struct {
	NameOrPath string `json:"_name_or_path"`
	ModelType  string `json:"model_type"`
}

// readBaseConfig reads config.json of a folder checkpoint; a single-file
// base, or a folder without one, gives the zero value and false.
func readBaseConfig(c *checkpoint.Checkpoint) (baseModelConfig, bool, error) {
	var cfg baseModelConfig
	if !c.IsFolder() {
		return cfg, false, nil
	}
	const maxConfigBytes = 16 << 20 // config.json files are kilobytes
	path := filepath.Join(c.Dir(), "config.json")
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, false, nil
	}
	if err != nil {
		return cfg, false, errorf(ErrInput, "base config: %v", pathErr(err))
	}
	if st.Size() > maxConfigBytes {
		return cfg, false, errorf(ErrInput, "base config %s: %d bytes is too large for a config.json", path, st.Size())
	}
	data, err := readSmallFile(path, st.Size())
	if err != nil {
		return cfg, false, errorf(ErrInput, "base config: %w", err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, false, errorf(ErrInput, "base config %s: %v", path, err)
	}
	return cfg, true, nil
}

// planLoRA lists the projections ExportLoRA factors, with their ranks, and
// the adapter config, from the headers alone: ft lists the fine-tune's
// tensors (ftPath names it in errors). maxRank caps the rank of the tensors
// it names (the ranks an archive keeps); nil for none. It refuses a rank
// above min(out, in) of every module (ErrUsage).
func planLoRA(base *checkpoint.Checkpoint, ft []checkpoint.Tensor, ftPath string, maxRank map[string]int, opt *LoRAOptions) (*loraLayout, error) {
	sel, err := NewSelector(nil, nil)
	if err != nil {
		return nil, err
	}
	cfg, hasCfg, err := readBaseConfig(base)
	if err != nil {
		return nil, err
	}
	l := &loraLayout{byName: map[string]int{}}
	rule := &CompressOptions{Mode: ModeDeltaCoMe, Select: sel} // the rule compress applies
	var clamped []string
	largest := 0
	for _, t := range ft {
		name := t.Name
		bt, inBase := base.Tensor(name)
		if !inBase {
			continue
		}
		if !slices.Equal(bt.Shape, t.Shape) {
			return nil, errorf(ErrInput, "tensor %q: shape %v in fine-tune %s, %v in base %s", name, t.Shape, ftPath, bt.Shape, base.Path())
		}
		if !lowRankCandidate(name, t, bt, rule) {
			continue
		}
		if !hasCfg && gpt2Conv1DName.MatchString(name) {
			l.conv1D = true
		}
		role := Role(name)
		m := LoRAModule{Tensor: name, Module: strings.TrimSuffix(name, ".weight"), Role: role,
			Out: int(t.Shape[0]), In: int(t.Shape[1]), AskedRank: opt.rankFor(role), OrigBytes: t.Size}
		l.byName[name] = len(l.modules)
		l.modules = append(l.modules, m)
	}
	if hasCfg && slices.Contains(conv1DModelTypes, cfg.ModelType) {
		l.conv1D = true
	} else if !hasCfg && l.conv1D {
		l.warns = append(l.warns, Warning{Code: WarnConv1DAssumed, Message: "no config.json next to the base tells its architecture: " +
			"the GPT-2 names of its projections are taken for Conv1D weights stored [in, out] (fan_in_fan_out true); for a GPT-BigCode model this is wrong"})
	}
	elemBytes := int64(opt.DType.Size())
	for i := range l.modules {
		m := &l.modules[i]
		if l.conv1D {
			m.Out, m.In = m.In, m.Out
		}
		largest = max(largest, min(m.Out, m.In))
		m.Rank = min(m.AskedRank, m.Out, m.In)
		if r, ok := maxRank[m.Tensor]; ok {
			m.Rank = min(m.Rank, max(r, 1)) // PEFT has no rank 0
		}
		if m.Rank < m.AskedRank {
			clamped = append(clamped, m.Module)
		}
		m.Bytes = int64(m.Rank) * int64(m.Out+m.In) * elemBytes
	}
	if len(l.modules) == 0 {
		return nil, errorf(ErrInput, "no projection of %s pairs with one of %s: nothing to export as a LoRA", ftPath, base.Path())
	}
	for _, m := range l.modules {
		if m.AskedRank > largest {
			return nil, errorf(ErrUsage, "rank %d is above the size of every matrix it applies to (the largest rank any of them takes is %d): "+
				"a LoRA of full rank is the delta itself; give a rank of at most %d", m.AskedRank, largest, largest)
		}
	}
	var larger []string
	for _, m := range l.modules {
		if m.Bytes >= int64(m.Out)*int64(m.In)*elemBytes {
			larger = append(larger, m.Module)
		}
	}
	if len(larger) > 0 {
		l.warns = append(l.warns, Warning{Code: WarnLargerThanDelta, Message: fmt.Sprintf(
			"the factors of %d projections (%s) take more bytes than their delta stored whole: r (out + in) >= out x in; a lower rank keeps the adapter small",
			len(larger), listNames(larger))})
	}
	if len(clamped) > 0 {
		l.warns = append(l.warns, Warning{Code: WarnRankClamped, Message: fmt.Sprintf(
			"%d projections are smaller than the rank asked, or keep fewer singular vectors in the archive (%s): each gets that rank, which carries its delta exactly",
			len(clamped), listNames(clamped))})
	}
	l.baseName = cfg.NameOrPath
	l.weights = weights2D(ft)
	l.config = adapterConfig(l.modules, l.weights, l.baseName, l.conv1D)
	if l.config.R > VLLMMaxRank {
		l.warns = append(l.warns, Warning{Code: WarnVLLMRank, Message: fmt.Sprintf(
			"the adapter's rank r = %d is above %d: vLLM refuses it (its --max-lora-rank stops at %d); PEFT loads it", l.config.R, VLLMMaxRank, VLLMMaxRank)})
	}
	if cfg.NameOrPath == "" {
		l.warns = append(l.warns, Warning{Code: WarnNoBaseName, Message: "the base's config.json has no _name_or_path: " +
			"the adapter's base_model_name_or_path is null; set it to the base's Hub name or path for AutoPeftModelForCausalLM"})
	}
	return l, nil
}

// adapterConfig builds adapter_config.json for the modules: r is their
// largest rank and lora_alpha = r, so that PEFT's scaling lora_alpha / r is
// 1; a module of another rank gets rank_pattern and alpha_pattern entries
// of its rank (patternKey), keeping its scaling 1 in PEFT, and in vLLM, which reads r and
// lora_alpha alone. target_modules are the module names' last parts when
// every projection with such a last part is exported, else the full module
// paths.
func adapterConfig(modules []LoRAModule, weights []string, baseName string, conv1D bool) AdapterConfig {
	c := AdapterConfig{PeftType: "LORA", TaskType: "CAUSAL_LM", Bias: "none", FanInFanOut: conv1D, InferenceMode: true,
		InitLoraWeights: true, RankPattern: map[string]int{}, AlphaPattern: map[string]int{}}
	if baseName != "" {
		c.BaseModelNameOrPath = &baseName
	}
	for _, m := range modules {
		c.R = max(c.R, m.Rank)
	}
	c.LoraAlpha = c.R
	for _, m := range modules {
		if m.Rank != c.R {
			c.RankPattern[patternKey(m.Module)] = m.Rank
			c.AlphaPattern[patternKey(m.Module)] = m.Rank
		}
	}
	c.TargetModules = targetModules(modules, weights)
	return c
}

// patternKey returns the rank_pattern / alpha_pattern key of a module
// path: the path without its first part (layers.0.self_attn.q_proj for
// model.layers.0.self_attn.q_proj). PEFT takes a key for a regular
// expression matched against the module paths of the model, as
// (.*\.)?key$ in recent releases but .*\.key$, which needs a dot before
// the key, in older ones; a key that starts after the first dot matches its
// module in both, and no other: the layer index sits between dots.
func patternKey(module string) string {
	_, rest, ok := strings.Cut(module, ".")
	if !ok {
		return module
	}
	return rest
}

// targetModules returns the distinct last parts of the module paths (q_proj,
// ...), sorted, when PEFT, which wraps every module whose path ends in one
// of them, would wrap exactly the exported ones; else the full module paths.
// weights lists the 2-D tensors of the model.
func targetModules(modules []LoRAModule, weights []string) []string {
	var suffixes, full []string
	for _, m := range modules {
		full = append(full, m.Module)
		if s := lastPart(m.Module); !slices.Contains(suffixes, s) {
			suffixes = append(suffixes, s)
		}
	}
	for _, w := range weights {
		module, ok := strings.CutSuffix(w, ".weight")
		if ok && slices.Contains(suffixes, lastPart(module)) && !slices.Contains(full, module) {
			return full
		}
	}
	slices.Sort(suffixes)
	return suffixes
}

// lastPart returns what follows the last dot of a module path.
func lastPart(module string) string { return module[strings.LastIndex(module, ".")+1:] }

// weights2D lists the names of the 2-D tensors.
func weights2D(ts []checkpoint.Tensor) []string {
	var names []string
	for _, t := range ts {
		if len(t.Shape) == 2 {
			names = append(names, t.Name)
		}
	}
	return names
}

// tensorList returns the tensors of c in its order.
func tensorList(c *checkpoint.Checkpoint) []checkpoint.Tensor {
	ts := make([]checkpoint.Tensor, 0, c.Len())
	for _, n := range c.Names() {
		t, _ := c.Tensor(n)
		ts = append(ts, t)
	}
	return ts
}

// openLoRA validates opt, opens BASE and FT and plans the adapter from
// their headers; the caller closes both checkpoints.
func openLoRA(basePath, ftPath string, opt *LoRAOptions) (base, ft *checkpoint.Checkpoint, l *loraLayout, err error) {
	if err := opt.validate(); err != nil {
		return nil, nil, nil, err
	}
	if base, ft, err = openPair(basePath, ftPath); err != nil {
		return nil, nil, nil, err
	}
	if l, err = planLoRA(base, tensorList(ft), ft.Path(), nil, opt); err != nil {
		base.Close()
		ft.Close()
		return nil, nil, nil, err
	}
	return base, ft, l, nil
}

// PlanLoRA returns what ExportLoRA would write for FT (ftPath) against BASE
// (basePath), from the checkpoints' headers alone: every projection with
// its rank and bytes (all taken as changed), the config, the header and
// file sizes. Modules_to_save tensors are not counted: which tensors
// changed only their bytes tell. FT may be an archive (its manifest is
// read, no blob). Errors wrap ErrUsage, ErrInput or ErrWrongBase.
func PlanLoRA(basePath, ftPath string, opt LoRAOptions) (*LoRAResult, error) {
	var l *loraLayout
	fromArchive := isArchive(ftPath)
	if fromArchive {
		a, err := openLoRAArchive(basePath, ftPath, &opt)
		if err != nil {
			return nil, err
		}
		defer a.close()
		l = a.l
	} else {
		base, ft, pl, err := openLoRA(basePath, ftPath, &opt)
		if err != nil {
			return nil, err
		}
		defer base.Close()
		defer ft.Close()
		l = pl
	}
	res := &LoRAResult{Modules: l.modules, Config: l.config, Conv1D: l.conv1D, Warnings: l.warns, FromArchive: fromArchive}
	if err := res.sizeFile(opt.DType, nil); err != nil {
		return nil, err
	}
	return res, nil
}

// adapterInfos lists the tensors of adapter_model.safetensors in file
// order: lora_A then lora_B of each module, then the saved tensors.
func adapterInfos(modules []LoRAModule, dt safetensors.DType, saved []LoRAOther) ([]stfile.Info, error) {
	var infos []stfile.Info
	for _, m := range modules {
		infos = append(infos,
			stfile.Info{Name: peftPrefix + m.Module + ".lora_A.weight", DType: dt, Shape: []uint64{uint64(m.Rank), uint64(m.In)}},
			stfile.Info{Name: peftPrefix + m.Module + ".lora_B.weight", DType: dt, Shape: []uint64{uint64(m.Out), uint64(m.Rank)}})
	}
	for _, o := range saved {
		d, err := safetensors.ParseDType(o.DType)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", o.Name, err)
		}
		infos = append(infos, stfile.Info{Name: peftPrefix + o.Name, DType: d, Shape: o.Shape, Size: o.Bytes})
	}
	return infos, nil
}

// adapterMetadata is the safetensors metadata PEFT writes (through
// safetensors.torch.save_file) and transformers' loader checks.
var adapterMetadata = map[string]string{"format": "pt"}

// sizeFile fills the byte counts of r from its modules and saved tensors.
func (r *LoRAResult) sizeFile(dt safetensors.DType, saved []LoRAOther) error {
	infos, err := adapterInfos(r.Modules, dt, saved)
	if err != nil {
		return err
	}
	h, err := stfile.EncodeHeader(infos, adapterMetadata)
	if err != nil {
		return fmt.Errorf("adapter header: %w", err)
	}
	const lengthPrefix = 8 // the u64 header length of a safetensors file
	r.LoRABytes, r.SavedBytes = 0, 0
	for _, m := range r.Modules {
		r.LoRABytes += m.Bytes
	}
	for _, o := range saved {
		r.SavedBytes += o.Bytes
	}
	r.HeaderBytes = lengthPrefix + int64(len(h))
	r.AdapterBytes = r.HeaderBytes + r.LoRABytes + r.SavedBytes
	return nil
}

// loraFactors is one projection's result: the stored lora_A and lora_B.
type loraFactors struct {
	a, b []byte
}

// loraTensor is the outcome of one fine-tune tensor: at most one field is
// set.
type loraTensor struct {
	module    *LoRAModule // an exported projection
	factors   loraFactors
	unchanged string     // the module path of a projection equal to its base
	other     *LoRAOther // a changed tensor outside the projections
}

// loraSource is where ExportLoRA reads the fine-tune: a checkpoint, or an
// archive applied to the base.
type loraSource struct {
	// tensors lists the fine-tune's tensors in order.
	tensors []checkpoint.Tensor
	// export factors or measures tensor i; it may run on several
	// goroutines at once.
	export func(i int) (loraTensor, error)
	// data returns the fine-tune bytes of a tensor saved whole.
	data func(name string) ([]byte, error)
	// workers is the pool size when LoRAOptions.Workers < 1.
	workers int
	// desc names the inputs in errors: "FT against BASE".
	desc string
}

// ExportLoRA writes a PEFT LoRA adapter of FT (ftPath) against BASE
// (basePath) into the folder outDir: adapter_model.safetensors with lora_A
// (rank x in) and lora_B (out x rank) of each selected projection, the
// top-rank truncated SVD of its delta split as B = U sqrt(S), A = sqrt(S)
// V^T and stored in opt.DType, and adapter_config.json. FT may be a
// deltacome archive made against BASE (see exportArchive). outDir must not
// exist or be empty; it appears only when complete. The factors are held
// in memory until the file is written: the adapter's size, plus one
// projection's working set per worker. Errors wrap ErrUsage, ErrExists,
// ErrInput or ErrWrongBase.
func ExportLoRA(ctx context.Context, basePath, ftPath, outDir string, opt LoRAOptions) (*LoRAResult, error) {
	if opt.Progress == nil {
		opt.Progress = NoProgress{}
	}
	if isArchive(ftPath) {
		return exportArchive(ctx, basePath, ftPath, outDir, opt)
	}
	base, ft, l, err := openLoRA(basePath, ftPath, &opt)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	defer ft.Close()
	if err := checkOutDir(outDir, basePath, ftPath); err != nil {
		return nil, err
	}
	ts := tensorList(ft)
	src := loraSource{tensors: ts, workers: defaultWorkers(ft), desc: ftPath + " against " + basePath,
		export: func(i int) (loraTensor, error) {
			r, err := exportTensor(base, ft, ts[i].Name, l, &opt)
			ft.Release(ts[i].Name)
			base.Release(ts[i].Name)
			return r, err
		},
		data: ft.Data}
	return runLoRA(ctx, outDir, l, src, &opt)
}

// runLoRA exports every tensor of src on a pool of workers, totals the
// results and writes the adapter.
func runLoRA(ctx context.Context, outDir string, l *loraLayout, src loraSource, opt *LoRAOptions) (*LoRAResult, error) {
	res := &LoRAResult{Conv1D: l.conv1D}
	warn := func(w Warning) {
		res.Warnings = append(res.Warnings, w)
		opt.Progress.Warn(w)
	}
	for _, w := range l.warns {
		if w.Code != WarnVLLMRank { // said again below, from the adapter's r
			warn(w)
		}
	}
	ts := src.tensors
	var total int64
	for _, t := range ts {
		total += t.Size
	}
	opt.Progress.Begin(len(ts), total)
	workers := opt.Workers
	if workers < 1 {
		workers = src.workers
	}
	var outcomes []loraTensor
	var energy, projEnergy, errSq, keptSq float64
	work := func(ctx context.Context, i int) (loraTensor, error) { return src.export(i) }
	consume := func(i int, r loraTensor) error {
		t := ts[i]
		ev := Event{Index: i, Total: len(ts), Name: t.Name, Shape: t.Shape, DType: t.DType.String(), OrigBytes: t.Size}
		switch {
		case r.module != nil:
			m := r.module
			n2 := m.DeltaNorm * m.DeltaNorm
			energy += n2
			projEnergy += n2
			errSq += m.RelError * m.RelError * n2
			keptSq += m.EnergyKept * n2
			ev.Kind, ev.Rank, ev.StoredBytes, ev.RelError = "lora", m.Rank, m.Bytes, m.RelError
		case r.other != nil:
			energy += r.other.DeltaNormSq
			ev.Kind = "left out"
			if r.other.Saved {
				ev.Kind, ev.StoredBytes = "modules_to_save", t.Size
			}
		default:
			ev.Kind = "same"
		}
		outcomes = append(outcomes, r)
		opt.Progress.Tensor(ev)
		return nil
	}
	if err := ordered(ctx, len(ts), workers, work, consume); err != nil {
		return nil, err
	}

	var saved []LoRAOther
	var archErrSq float64
	for _, r := range outcomes {
		switch {
		case r.module != nil:
			res.Modules = append(res.Modules, *r.module)
			archErrSq += r.module.ArchiveRelError * r.module.ArchiveRelError * r.module.DeltaNorm * r.module.DeltaNorm
		case r.unchanged != "":
			res.Unchanged = append(res.Unchanged, r.unchanged)
		case r.other != nil:
			if energy > 0 {
				r.other.Share = r.other.DeltaNormSq / energy
			}
			res.Others = append(res.Others, *r.other)
			if r.other.Saved {
				saved = append(saved, *r.other)
			}
		}
	}
	if len(res.Modules) == 0 {
		return nil, errorf(ErrInput, "no projection of %s differs: there is no delta to export", src.desc)
	}
	if energy > 0 {
		res.ProjShare = projEnergy / energy
	}
	if projEnergy > 0 {
		res.RelError, res.EnergyKept = math.Sqrt(errSq/projEnergy), keptSq/projEnergy
		res.ArchiveRelError = math.Sqrt(archErrSq / projEnergy)
	}
	res.Config = adapterConfig(res.Modules, l.weights, l.baseName, l.conv1D)
	if opt.ModulesToSave {
		res.Config.ModulesToSave = savedModules(saved)
	}
	for _, w := range otherWarnings(res, opt) {
		warn(w)
	}
	if err := res.sizeFile(opt.DType, saved); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := writeAdapter(src.data, outDir, res, outcomes, saved, opt.DType); err != nil {
		return nil, err
	}
	return res, nil
}

// exportTensor reads one fine-tune tensor and its base and factors it (a
// selected projection) or measures its delta (any other changed tensor).
func exportTensor(base, ft *checkpoint.Checkpoint, name string, l *loraLayout, opt *LoRAOptions) (loraTensor, error) {
	t, _ := ft.Tensor(name)
	bt, inBase := base.Tensor(name)
	if !inBase {
		return absentFromBase(t), nil
	}
	data, err := ft.Data(name)
	if err != nil {
		return loraTensor{}, errorf(ErrInput, "fine-tune: %w", err)
	}
	bdata, err := base.Data(name)
	if err != nil {
		return loraTensor{}, errorf(ErrInput, "base: %w", err)
	}
	return exportBytes(t, bt, data, bdata, l, opt)
}

// absentFromBase is the outcome of a fine-tune tensor the base lacks.
func absentFromBase(t checkpoint.Tensor) loraTensor {
	return loraTensor{other: &LoRAOther{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, Role: Role(t.Name), Bytes: t.Size,
		Why: "absent from the base"}}
}

// exportBytes factors the fine-tune tensor t (data) against its base bt
// (bdata) if it is a selected projection, or measures its delta otherwise.
func exportBytes(t, bt checkpoint.Tensor, data, bdata []byte, l *loraLayout, opt *LoRAOptions) (loraTensor, error) {
	name := t.Name
	other := &LoRAOther{Name: name, DType: t.DType.String(), Shape: t.Shape, Role: Role(name), Bytes: t.Size}
	i, isModule := l.byName[name]
	if bt.DType == t.DType && bytes.Equal(data, bdata) {
		if isModule {
			return loraTensor{unchanged: l.modules[i].Module}, nil
		}
		return loraTensor{}, nil
	}
	if isModule {
		m := l.modules[i]
		f, err := factorModule(&m, data, t.DType, bdata, bt.DType, l.conv1D, opt.SVD, opt.DType)
		if err != nil {
			return loraTensor{}, err
		}
		if m.DeltaNorm == 0 {
			return loraTensor{unchanged: m.Module}, nil
		}
		return loraTensor{module: &m, factors: f}, nil
	}
	if !dtype.IsFloat(t.DType) || !dtype.IsFloat(bt.DType) {
		other.Why = "not floating point"
		return loraTensor{other: other}, nil
	}
	var err error
	if other.DeltaNormSq, err = deltaNormSq(data, t.DType, bdata, bt.DType); err != nil {
		return loraTensor{}, errorf(ErrInput, "tensor %q: %w", name, err)
	}
	if other.DeltaNormSq == 0 {
		return loraTensor{}, nil // other bytes, same values
	}
	k := strings.LastIndex(name, ".")
	if k < 0 {
		other.Why = "not the parameter of a module"
		return loraTensor{other: other}, nil
	}
	module := name[:k]
	if _, ok := l.byName[module+".weight"]; ok {
		other.Why = "a parameter of a LoRA target other than its weight (bias \"none\")"
		return loraTensor{other: other}, nil
	}
	other.Why = "not a projection: a LoRA carries the projections' deltas only"
	other.Saved = opt.ModulesToSave
	return loraTensor{other: other}, nil
}

// normChunk bounds the elements deltaNormSq converts at once, so that an
// embedding's delta never exists whole in float32.
const normChunk = 1 << 20

// deltaNormSq returns |ft - base|_F^2 of two float tensors of one shape,
// converting normChunk elements at a time. Errors wrap
// svdquant.ErrNonFinite for NaN or Inf.
func deltaNormSq(ft []byte, ftDT safetensors.DType, base []byte, baseDT safetensors.DType) (float64, error) {
	fs, bs := int(ftDT.Size()), int(baseDT.Size())
	n := len(ft) / fs
	buf := make([]float32, min(n, normChunk))
	var sum float64
	for lo := 0; lo < n; lo += len(buf) {
		hi := min(lo+len(buf), n)
		d := buf[:hi-lo]
		if err := svdquant.Delta(d, ft[lo*fs:hi*fs], ftDT, base[lo*bs:hi*bs], baseDT); err != nil {
			return 0, err
		}
		for _, x := range d {
			sum += float64(x) * float64(x)
		}
	}
	return sum, nil
}

// factorModule computes the rank-m.Rank factors of one projection's delta
// ft - base (factorDelta) and fills m's measurements.
func factorModule(m *LoRAModule, data []byte, dt safetensors.DType, bdata []byte, bdt safetensors.DType, conv1D bool, route linalg.Route, out safetensors.DType) (loraFactors, error) {
	delta := make([]float32, m.Out*m.In)
	if err := svdquant.Delta(delta, data, dt, bdata, bdt); err != nil {
		return loraFactors{}, errorf(ErrInput, "tensor %q: %w", m.Tensor, err)
	}
	return factorDelta(m, delta, conv1D, route, out)
}

// factorDelta computes the rank-m.Rank factors of delta and fills m's
// measurements. delta is rows x cols as stored: out x in, or in x out for
// a Conv1D weight (conv1D), whose factors are those of the transpose. An
// all-zero delta gives DeltaNorm 0 and no factors.
func factorDelta(m *LoRAModule, delta []float32, conv1D bool, route linalg.Route, out safetensors.DType) (loraFactors, error) {
	rows, cols := m.Out, m.In
	if conv1D {
		rows, cols = m.In, m.Out
	}
	var normSq float64
	for _, x := range delta {
		normSq += float64(x) * float64(x)
	}
	m.DeltaNorm = math.Sqrt(normSq)
	if normSq == 0 {
		return loraFactors{}, nil
	}
	svd, err := linalg.Truncated(delta, rows, cols, m.Rank, route)
	if err != nil {
		return loraFactors{}, fmt.Errorf("tensor %q: svd: %w", m.Tensor, err)
	}
	r := m.Rank
	// B = U sqrt(S) (out x r), A = sqrt(S) V^T (r x in), of the delta in
	// PEFT's out x in orientation. Columns from svd.Rank on stay zero: the
	// singular values there are numerically zero.
	b, a := make([]float32, m.Out*r), make([]float32, r*m.In)
	var kept float64
	for j := range svd.Rank {
		s := float64(svd.S[j])
		kept += s * s
		root := float32(math.Sqrt(s))
		outVec, inVec := svd.LeftVec(j), svd.RightVec(j)
		if conv1D {
			outVec, inVec = inVec, outVec
		}
		for o, x := range outVec {
			b[o*r+j] = x * root
		}
		for i, x := range inVec {
			a[j*m.In+i] = x * root
		}
	}
	es := int(out.Size())
	f := loraFactors{a: make([]byte, len(a)*es), b: make([]byte, len(b)*es)}
	// Round to the stored dtype, then measure what was stored.
	if err := errors.Join(dtype.Encode(f.a, a, out), dtype.Encode(f.b, b, out),
		dtype.Decode(a, f.a, out), dtype.Decode(b, f.b, out)); err != nil {
		panic(fmt.Sprintf("engine: factor dtype %s: %v", out, err)) // validated by LoRAOptions.validate
	}
	m.EnergyKept = min(kept/normSq, 1)
	m.TruncError = math.Sqrt(1 - m.EnergyKept)
	m.RelError = math.Sqrt(loraResidualSq(delta, cols, conv1D, b, a, m.Out, m.In, r) / normSq)
	if math.IsNaN(m.RelError) || math.IsInf(m.RelError, 0) {
		return loraFactors{}, errorf(ErrUsage, "tensor %q: its factors overflow %s; use --dtype bf16 or f32", m.Tensor, out)
	}
	return f, nil
}

// loraResidualSq returns |Delta - B A|_F^2 for B (out x r) and A (r x in),
// Delta row-major with cols columns, stored out x in or, when transposed,
// in x out. B A is formed a block of rows at a time.
func loraResidualSq(delta []float32, cols int, transposed bool, b, a []float32, out, in, r int) float64 {
	const block = 64 // rows of B A formed at once
	buf := make([]float32, block*in)
	var sum float64
	for o0 := 0; o0 < out; o0 += block {
		n := min(block, out-o0)
		blas32.Gemm(blas.NoTrans, blas.NoTrans, 1,
			blas32.General{Rows: n, Cols: r, Stride: r, Data: b[o0*r:]},
			blas32.General{Rows: r, Cols: in, Stride: in, Data: a},
			0, blas32.General{Rows: n, Cols: in, Stride: in, Data: buf})
		for o := range n {
			for i := range in {
				k := (o0+o)*cols + i
				if transposed {
					k = i*cols + o0 + o
				}
				d := delta[k]
				x := float64(d) - float64(buf[o*in+i])
				sum += x * x
			}
		}
	}
	return sum
}

// savedModules lists the module paths of the saved tensors, in order, once
// each: PEFT's modules_to_save.
func savedModules(saved []LoRAOther) []string {
	var modules []string
	for _, o := range saved {
		m := o.Name[:strings.LastIndex(o.Name, ".")]
		if !slices.Contains(modules, m) {
			modules = append(modules, m)
		}
	}
	return modules
}

// otherWarnings says what the adapter leaves out or carries whole, and
// whether vLLM will serve it.
func otherWarnings(res *LoRAResult, opt *LoRAOptions) []Warning {
	var ws []Warning
	var left, saveable, saved []string
	var leftShare, savedShare float64
	for _, o := range res.Others {
		if o.Saved {
			saved = append(saved, o.Name)
			savedShare += o.Share
			continue
		}
		left = append(left, o.Name)
		leftShare += o.Share
		if strings.HasPrefix(o.Why, "not a projection") {
			saveable = append(saveable, o.Name)
		}
	}
	if len(left) > 0 {
		msg := fmt.Sprintf("%d changed tensors outside the exported projections are not in the adapter (%s): %.2f%% of the delta's energy |Delta|^2, which a LoRA cannot carry",
			len(left), listNames(left), 100*leftShare)
		if len(saveable) > 0 && !opt.ModulesToSave {
			msg += "; --modules-to-save includes the tensors of other modules whole (PEFT loads them, vLLM refuses them)"
		}
		ws = append(ws, Warning{Code: WarnLeftOut, Message: msg})
	}
	if len(saved) > 0 {
		ws = append(ws, Warning{Code: WarnModulesToSave, Message: fmt.Sprintf(
			"the adapter carries %d tensors whole as modules_to_save (%s, %.2f%% of the delta's energy): PEFT loads them, vLLM refuses an adapter with modules_to_save",
			len(saved), listNames(saved), 100*savedShare)})
	}
	if res.Config.R > VLLMMaxRank {
		ws = append(ws, Warning{Code: WarnVLLMRank, Message: fmt.Sprintf(
			"the adapter's rank r = %d is above %d: vLLM refuses it (its --max-lora-rank stops at %d); PEFT loads it", res.Config.R, VLLMMaxRank, VLLMMaxRank)})
	}
	return ws
}

// writeAdapter writes adapter_model.safetensors and adapter_config.json
// into a temporary folder beside outDir and renames it to outDir once
// complete, replacing an empty outDir.
func writeAdapter(ftData func(name string) ([]byte, error), outDir string, res *LoRAResult, outcomes []loraTensor, saved []LoRAOther, dt safetensors.DType) error {
	infos, err := adapterInfos(res.Modules, dt, saved)
	if err != nil {
		return err
	}
	header, err := stfile.EncodeHeader(infos, adapterMetadata)
	if err != nil {
		return fmt.Errorf("adapter header: %w", err)
	}
	cfg, err := json.MarshalIndent(res.Config, "", "  ")
	if err != nil {
		return fmt.Errorf("adapter config: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(outDir)), "."+filepath.Base(outDir)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	err = writeFileSynced(filepath.Join(tmp, AdapterWeightsFile), func(w *bufio.Writer) error {
		if err := stfile.WriteHeader(w, header); err != nil {
			return err
		}
		for _, r := range outcomes {
			if r.module == nil {
				continue
			}
			if _, err := w.Write(r.factors.a); err != nil {
				return err
			}
			if _, err := w.Write(r.factors.b); err != nil {
				return err
			}
		}
		for _, o := range saved {
			data, err := ftData(o.Name)
			if err != nil {
				return errorf(ErrInput, "fine-tune: %w", err)
			}
			if _, err = w.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = writeFileSynced(filepath.Join(tmp, AdapterConfigFile), func(w *bufio.Writer) error {
			_, err := w.Write(append(cfg, '\n'))
			return err
		})
	}
	if err != nil {
		return err
	}
	// MkdirTemp's folder is private; an adapter is read by servers that may
	// run as other users, like any model folder.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	if err := os.Remove(outDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace empty %s: %w", outDir, err)
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return fmt.Errorf("create output %s: %w", outDir, err)
	}
	ok = true
	return nil
}

// writeFileSynced creates path, fills it with write through a buffer, and
// flushes, syncs and closes it, returning the first error.
func writeFileSynced(path string, write func(w *bufio.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
