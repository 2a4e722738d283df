package engine

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/deltacome/deltacome/internal/checkpoint"
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

func (w Warning) String() string { return w.Message }

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
	var ftOnly, baseOnly []string
	selected := 0
	for _, name := range ft.Names() {
		t, _ := ft.Tensor(name)
		bt, ok := base.Tensor(name)
		if !ok {
			ftOnly = append(ftOnly, name)
			continue
		}
		class, err := classify(base, ft, name, opt)
		switch {
		case err != nil: // Compress and Plan fail on it first
		case class == classLossy:
			selected++
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
	if len(ftOnly) > 0 {
		ws = append(ws, Warning{Code: WarnUnmatchedNames, Message: fmt.Sprintf(
			"%d of %d fine-tune tensors have no tensor of that name in the base (%s): they are stored whole, uncompressed; is %s the base of %s?",
			len(ftOnly), len(ft.Names()), listNames(ftOnly), base.Path(), ft.Path())})
	}
	if len(baseOnly) > 0 {
		ws = append(ws, Warning{Code: WarnUnmatchedNames, Message: fmt.Sprintf(
			"%d base tensors are absent from the fine-tune (%s); the reconstruction will not have them either",
			len(baseOnly), listNames(baseOnly))})
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
	if opt.method() != MethodBitDelta && opt.Ratio < lowRatioLimit && !math.IsInf(opt.Ratio, 0) {
		ws = append(ws, Warning{Code: WarnLowRatio, Message: fmt.Sprintf(
			"at --ratio %g each projection may keep %.0f%% of its 16-bit size, lossily; --lossless typically stores it bit-exact in about 60%%",
			opt.Ratio, 100/opt.Ratio)})
	}
	return ws
}

// rankZeroWarning reports a lossy record that kept no singular pair, or
// returns false.
func rankZeroWarning(rec *archive.Tensor) (Warning, bool) {
	rank := -1
	switch {
	case rec.LowRank != nil:
		rank = rec.LowRank.Rank
	case rec.LowRankBF16 != nil:
		rank = rec.LowRankBF16.Rank
	}
	if rank != 0 {
		return Warning{}, false
	}
	return Warning{Code: WarnRankZero, Subject: rec.Name, Message: fmt.Sprintf(
		"tensor %q: its budget at this ratio holds no singular pair, so it keeps rank 0 and is reconstructed as the base tensor; lower --ratio to keep part of its delta",
		rec.Name)}, true
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
