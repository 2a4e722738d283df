package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

// progress renders engine progress on w: one line per tensor (when line is
// set) and, when w is a terminal, a bar with rate and ETA below them, each
// line printed above the bar. Nothing at all when quiet, but warnings when
// warn is set.
type progress struct {
	w     io.Writer
	quiet bool
	warn  bool
	tty   bool
	verb  string
	line  func(engine.Event) string
	bar   *progressbar.ProgressBar
}

// newProgress returns the progress renderer of a command; line formats the
// per-tensor lines, nil for none.
func newProgress(w io.Writer, quiet bool, verb string, line func(engine.Event) string) *progress {
	return &progress{w: w, quiet: quiet, verb: verb, line: line, tty: isTerminal(w)}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Begin implements engine.Progress.
func (p *progress) Begin(total int, totalBytes int64) {
	if p.quiet || !p.tty || totalBytes <= 0 {
		return
	}
	p.bar = progressbar.NewOptions64(totalBytes,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.verb),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetWidth(30),
	)
	_ = p.bar.RenderBlank()
}

// Tensor implements engine.Progress. The bar is redrawn once per tensor
// (never throttled), so that a line printed above it is never left without
// the bar below.
func (p *progress) Tensor(ev engine.Event) {
	if p.quiet {
		return
	}
	if p.line != nil {
		if p.bar != nil {
			_ = p.bar.Clear()
		}
		fmt.Fprintln(p.w, p.line(ev))
	}
	if p.bar != nil {
		_ = p.bar.Add64(ev.OrigBytes)
	}
}

// FirstPass implements engine.FirstPassProgress: one line per projection
// of compress's first pass (--max-error, --budget model), where lines are
// printed.
func (p *progress) FirstPass(done, total int, name string) {
	if p.quiet || p.line == nil {
		return
	}
	fmt.Fprintf(p.w, "[%*d/%d] %s: first pass (SVD and allocation at every candidate budget)\n", countWidth(total), done, total, name)
}

// Warn implements engine.Progress: "warning: ..." above the bar.
func (p *progress) Warn(w engine.Warning) {
	if p.quiet && !p.warn {
		return
	}
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintln(p.w, "warning:", w.Message)
	if p.bar != nil {
		_ = p.bar.RenderBlank()
	}
}

// finish removes the bar, leaving the lines.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Exit()
		_ = p.bar.Clear()
		p.bar = nil
	}
}

// countWidth is the width of the tensor counter of total tensors.
func countWidth(total int) int { return len(fmt.Sprint(total)) }

// tensorLine is compress's per-tensor line, in the manner of llama-quantize:
// [ 12/291] name [11008x4096] bf16 -> rank 1462 (8:2 3:32 2:1428) 86.0 MiB -> 5.4 MiB err 0.041
func tensorLine(ev engine.Event) string {
	s := fmt.Sprintf("[%*d/%d] %s [%s] %s -> ", countWidth(ev.Total), ev.Index+1, ev.Total, ev.Name, shapeString(ev.Shape), ev.DType)
	quantized := ev.Kind == archive.KindLowRank || ev.Kind == archive.KindLowRankSym
	switch {
	case quantized:
		s += fmt.Sprintf("rank %d (%s) ", ev.Rank, ev.Bands)
	case ev.Rank > 0:
		s += fmt.Sprintf("%s rank %d ", ev.Kind, ev.Rank)
	default:
		s += ev.Kind + " "
	}
	s += fmt.Sprintf("%s -> %s", size(ev.OrigBytes), size(ev.StoredBytes))
	if quantized || ev.RelError > 0 {
		s += fmt.Sprintf(" err %.4f", ev.RelError)
	}
	if ev.SVDFallback != "" {
		s += " (svd fell back: " + ev.SVDFallback + ")"
	}
	return s
}

// reconstructLine is reconstruct's per-tensor line.
func reconstructLine(ev engine.Event) string {
	return fmt.Sprintf("[%*d/%d] %s [%s] %s <- %s", countWidth(ev.Total), ev.Index+1, ev.Total, ev.Name, shapeString(ev.Shape), ev.DType, ev.Kind)
}
