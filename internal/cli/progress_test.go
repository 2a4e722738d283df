package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

// TestProgressLinesAboveBar drives the terminal renderer into a buffer: every
// tensor line must come out whole, on its own line, with the bar redrawn
// after it and removed at the end.
func TestProgressLinesAboveBar(t *testing.T) {
	var buf bytes.Buffer
	p := &progress{w: &buf, tty: true, verb: "compress", line: tensorLine}
	const n = 3
	p.Begin(n, n*1000)
	for i := range n {
		p.Tensor(engine.Event{Index: i, Total: n, Name: "t" + string(rune('a'+i)), Shape: []uint64{10, 50}, DType: "BF16",
			Kind: archive.KindXOR, OrigBytes: 1000, StoredBytes: 10})
	}
	p.finish()
	out := buf.String()
	for i := range n {
		line := tensorLine(engine.Event{Index: i, Total: n, Name: "t" + string(rune('a'+i)), Shape: []uint64{10, 50}, DType: "BF16",
			Kind: archive.KindXOR, OrigBytes: 1000, StoredBytes: 10})
		assert.Contains(t, out, "\r"+line+"\n", "line %d printed whole after the bar is cleared", i)
	}
	assert.Contains(t, out, "compress", "the bar was drawn")
	assert.Regexp(t, `\r +\r$`, out, "the bar is overwritten with blanks at the end")
}

func TestProgressModes(t *testing.T) {
	ev := engine.Event{Index: 0, Total: 1, Name: "w", Shape: []uint64{2, 2}, DType: "F32", Kind: archive.KindSame, OrigBytes: 16}
	cases := []struct {
		name  string
		p     *progress
		lines int
	}{
		{"pipe: lines, no bar", newProgress(&bytes.Buffer{}, false, "compress", tensorLine), 1},
		{"quiet: nothing", newProgress(&bytes.Buffer{}, true, "compress", tensorLine), 0},
		{"no line function: nothing on a pipe", newProgress(&bytes.Buffer{}, false, "verify", nil), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Begin(1, 16)
			tc.p.Tensor(ev)
			tc.p.finish()
			out := tc.p.w.(*bytes.Buffer).String()
			assert.Equal(t, tc.lines, strings.Count(out, "\n"))
			assert.NotContains(t, out, "\r", "no bar drawn off a terminal")
		})
	}
}
