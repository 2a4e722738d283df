package engine

import (
	"fmt"
	"slices"
	"strings"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Warning codes (Warning.Code): stable identifiers for scripts reading the
// --json output.
const (
	// WarnUnmatchedNames: tensors of the fine-tune have no counterpart of
	// that name in the base (or the reverse); they are stored whole.
	WarnUnmatchedNames = "unmatched-names"
	// WarnEmptySelection: no tensor is selected for lossy compression, so
	// the archive is in effect lossless.
	WarnEmptySelection = "empty-selection"
	// WarnRankZero: a projection's budget holds no singular pair; it is
	// reconstructed as its base.
	WarnRankZero = "rank-zero"
	// WarnSameInput: BASE and FT are one checkpoint; the archive holds no
	// delta.
	WarnSameInput = "same-input"
	// WarnLowRatio: the ratio is so low that the lossy archive is likely
	// larger than a lossless one.
	WarnLowRatio = "low-ratio"
	// WarnShapeChanged: a tensor has another shape in the fine-tune than in
	// the base (an embedding or output head grown by added tokens); it is
	// stored whole, bit-exact. Subject names the tensor.
	WarnShapeChanged = "shape-changed"
	// WarnSkippedFile: an entry of the fine-tune folder is not carried (a
	// weight file in another format, a file over the size caps, a
	// subfolder, a file that is not regular). Subject names it.
	WarnSkippedFile = "skipped-file"
	// WarnThinCalibration: the calibration statistics were measured on
	// fewer tokens than calibration needs to help (docs/CALIBRATION.md).
	// Subject names the statistics file.
	WarnThinCalibration = "thin-calibration"
	// WarnNoCalibrationSite: projections have no input site in the
	// calibration statistics; they are compressed data-free.
	WarnNoCalibrationSite = "no-calibration-site"
	// WarnCalibrationModel: the calibration statistics record another
	// checkpoint's fingerprint than the fine-tune's (of the same layout),
	// or none. Subject names the statistics file.
	WarnCalibrationModel = "calibration-model"
)

// Warning is something the user should know before trusting a result:
// compress goes on, but the archive may not be what was meant.
type Warning struct {
	// Code is one of the Warn* constants.
	Code string `json:"code"`
	// Subject names the tensor or file concerned; "" for the whole run.
	Subject string `json:"subject,omitempty"`
	// Message says what happened and what to do about it.
	Message string `json:"message"`
}

// maxListed bounds the names quoted in one warning message.
const maxListed = 3

// listNames quotes up to maxListed names and says how many more there are.
func listNames(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(names)-maxListed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}

// lowRatioLimit is the ratio below which a lossy archive is likely larger
// than a lossless one: at ratio R each projection may take 1/R of its
// 16-bit size, and XOR with the base then zstd stores a fine-tune's 16-bit
// tensors in about 60% of their size (the bundled pair: 7.8 of 13.0 MB).
const lowRatioLimit = 2

// pairWarnings returns what the headers of BASE and FT already tell about
// a compression with opt: names that do not pair up, tensors whose shape
// changed, a selection that matches nothing, a ratio too low to pay.
func pairWarnings(base, ft *checkpoint.Checkpoint, opt *CompressOptions) []Warning {
	var ws []Warning
	if samePath(base.Path(), ft.Path()) {
		ws = append(ws, Warning{Code: WarnSameInput, Message: fmt.Sprintf(
			"BASE and FT are both %s: the archive will hold no delta; give the fine-tune as FT", ft.Path())})
	}
	var ftOnly, baseOnly, zero []string
	selected, ftOnlySelected := 0, 0
	for _, name := range ft.Names() {
		t, _ := ft.Tensor(name)
		bt, ok := base.Tensor(name)
		if !ok {
			ftOnly = append(ftOnly, name)
			if opt.Mode == ModeDeltaCoMe && len(t.Shape) == 2 && opt.Select.Match(name) {
				ftOnlySelected++
			}
			continue
		}
		class, err := classify(base, ft, name, opt)
		switch {
		case err != nil: // Compress and Plan fail on it first
		case class == classLossy:
			selected++
			if rankZeroAhead(t.Shape, opt) {
				zero = append(zero, name)
			}
		case !slices.Equal(bt.Shape, t.Shape):
			ws = append(ws, Warning{Code: WarnShapeChanged, Subject: name, Message: fmt.Sprintf(
				"tensor %q has shape %v in the fine-tune and %v in the base: it is stored whole, bit-exact, at its full size (an embedding or output head grows so when tokens are added)",
				name, t.Shape, bt.Shape)})
		}
	}
	for _, name := range base.Names() {
		if _, ok := ft.Tensor(name); !ok {
			baseOnly = append(baseOnly, name)
		}
	}
	// A tensor or two of the fine-tune's own (a new head) is ordinary; a
	// projection without a base counterpart, or half the names unmatched,
	// means the names or the base are not what they should be.
	if ftOnlySelected > 0 || 2*len(ftOnly) >= len(ft.Names()) && len(ftOnly) > 0 {
		ws = append(ws, Warning{Code: WarnUnmatchedNames, Message: fmt.Sprintf(
			"%d of %d fine-tune tensors have no tensor of that name in the base (%s): they are stored whole, uncompressed; is %s the base of %s?",
			len(ftOnly), len(ft.Names()), listNames(ftOnly), base.Path(), ft.Path())})
		if len(baseOnly) > 0 {
			ws = append(ws, Warning{Code: WarnUnmatchedNames, Message: fmt.Sprintf(
				"%d base tensors are absent from the fine-tune (%s)", len(baseOnly), listNames(baseOnly))})
		}
	}
	if opt.Mode != ModeDeltaCoMe {
		return ws
	}
	if selected == 0 {
		msg := "no tensor is selected for lossy compression: every tensor is stored bit-exact, as --lossless would"
		if slices.Equal(opt.Select.Include, DefaultInclude) {
			msg += "; by default only the 2-D floating-point weights inside numbered blocks (layers.N., h.N., blocks.N., layer.N.) are, and none is present in both checkpoints: name the projections with --include"
		} else if len(opt.Select.Include) > 0 {
			msg += fmt.Sprintf("; the --include patterns %s match no 2-D floating-point tensor present in both checkpoints", listNames(opt.Select.Include))
		}
		ws = append(ws, Warning{Code: WarnEmptySelection, Message: msg})
	}
	if len(zero) > 0 {
		ws = append(ws, Warning{Code: WarnRankZero, Message: fmt.Sprintf(
			"at --ratio %g the budget of %d of %d selected projections (%s) is too small for even one singular pair: they keep rank 0 and are reconstructed as their base, dropping their fine-tuning; lower --ratio",
			opt.Ratio, len(zero), selected, listNames(zero))})
	}
	if opt.method() != MethodBitDelta && opt.Ratio < lowRatioLimit {
		ws = append(ws, Warning{Code: WarnLowRatio, Message: fmt.Sprintf(
			"at --ratio %g each projection may keep %.0f%% of its 16-bit size, lossily; --lossless typically stores it bit-exact in about 60%%",
			opt.Ratio, 100/opt.Ratio)})
	}
	return ws
}

// rankZeroAhead reports whether a selected projection of this shape cannot
// keep a single singular pair within its budget, whatever its delta: the
// cheapest pair (1-bit codes, or bf16 factors for the low-rank method)
// costs more than the budget. BitDelta has no rank.
func rankZeroAhead(shape []uint64, opt *CompressOptions) bool {
	rows, cols := int(shape[0]), int(shape[1])
	if rows == 0 || cols == 0 {
		return false
	}
	k, ok := storage.ForMethod(opt.method(), opt.grid())
	if !ok || k.PairBytes == nil {
		return false
	}
	budget, _ := k.Cost(rows, cols, opt.Ratio)
	return k.PairBytes(rows, cols, opt.GroupSize) > budget
}

// rankZero reports whether a stored record is a lossy one that kept no
// singular pair.
func rankZero(rec *archive.Tensor) bool {
	k, ok := storage.Lookup(rec.Kind)
	if !ok {
		return false
	}
	r := k.Report(rec).Rank
	return r != nil && *r == 0
}

// rankZeroWarning reports the projections that kept rank 0 although their
// budget held a pair (an all-zero delta, or every pair's error above its
// cost): the delta is dropped and the base is what comes back.
func rankZeroWarning(names []string) Warning {
	return Warning{Code: WarnRankZero, Message: fmt.Sprintf(
		"%d projections kept rank 0 (%s): they are reconstructed as their base tensor",
		len(names), listNames(names))}
}

// skippedWarnings reports each entry of the fine-tune folder that the
// archive will not carry, with the reason.
func skippedWarnings(skipped []checkpoint.SkippedFile) []Warning {
	ws := make([]Warning, 0, len(skipped))
	for _, f := range skipped {
		ws = append(ws, Warning{Code: WarnSkippedFile, Subject: f.Name, Message: fmt.Sprintf(
			"%q in the fine-tune folder is not carried (%s); the reconstructed folder will not have it", f.Name, f.Reason)})
	}
	return ws
}
