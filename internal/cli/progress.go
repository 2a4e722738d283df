package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/deltacome/deltacome/internal/engine"
)

// progress renders engine progress: a bar with rate and ETA when w is a
// terminal, one line per tensor otherwise, nothing when quiet.
type progress struct {
	w     io.Writer
	quiet bool
	tty   bool
	verb  string
	bar   *progressbar.ProgressBar
}

func newProgress(w io.Writer, quiet bool, verb string) *progress {
	p := &progress{w: w, quiet: quiet, verb: verb}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// Begin implements engine.Progress.
func (p *progress) Begin(total int, totalBytes int64) {
	if p.quiet || !p.tty {
		return
	}
	p.bar = progressbar.NewOptions64(totalBytes,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.verb),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100_000_000), // 0.1 s between redraws
		progressbar.OptionClearOnFinish(),
	)
}

// Tensor implements engine.Progress.
func (p *progress) Tensor(ev engine.Event) {
	switch {
	case p.quiet:
	case p.bar != nil:
		_ = p.bar.Add64(ev.OrigBytes)
	case p.verb == "reconstruct":
		fmt.Fprintf(p.w, "[%*d/%d] %s [%s] %s <- %s\n", len(fmt.Sprint(ev.Total)), ev.Index+1, ev.Total, ev.Name, shapeString(ev.Shape), ev.DType, ev.Kind)
	default:
		fmt.Fprintln(p.w, tensorLine(ev))
	}
}

// tensorLine is the per-tensor line, in the manner of llama-quantize:
// [ 12/291] name [11008x4096] bf16 -> rank 1462 (8:2 3:32 2:1428) 86.0 MiB -> 5.4 MiB err 0.041
func tensorLine(ev engine.Event) string {
	width := len(fmt.Sprint(ev.Total))
	s := fmt.Sprintf("[%*d/%d] %s [%s] %s -> ", width, ev.Index+1, ev.Total, ev.Name, shapeString(ev.Shape), ev.DType)
	if ev.Kind == "lowrank" {
		s += fmt.Sprintf("rank %d (%s) ", ev.Rank, ev.Bands)
	} else {
		s += ev.Kind + " "
	}
	s += fmt.Sprintf("%s -> %s", mib(ev.OrigBytes), mib(ev.StoredBytes))
	if ev.Kind == "lowrank" {
		s += fmt.Sprintf(" err %.4f", ev.RelError)
	}
	return s
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
