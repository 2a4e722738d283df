package deltaplot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testFigure is a decaying spectrum in three bands and four layers of
// three roles, from a seeded generator.
func testFigure() Figure {
	rng := rand.New(rand.NewPCG(1, 2))
	s := &Spectrum{Tensor: "model.layers.0.mlp.up_proj.weight", Bands: []Band{{8, 2}, {3, 10}, {2, 20}}}
	x := 3.0
	for range 32 {
		s.Sigma = append(s.Sigma, x)
		x *= 0.8 + 0.15*rng.Float64()
	}
	var layers []LayerPoint
	for _, role := range []string{"q", "up", "down"} {
		for l := range 4 {
			layers = append(layers, LayerPoint{Layer: l, Role: role, DeltaNorm: 1, RelError: 0.2 + 0.1*rng.Float64()})
		}
	}
	layers = append(layers, LayerPoint{Layer: -1, Role: "other", DeltaNorm: 1, RelError: 0.5})
	return Figure{Spectrum: s, Layers: layers}
}

func TestWritePNG(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, Write(&buf, PNG, testFigure()))
	img, err := png.Decode(&buf)
	require.NoError(t, err)
	b := img.Bounds()
	assert.Greater(t, b.Dy(), b.Dx(), "three panels stacked: taller than wide")
}

func TestWriteSVG(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, Write(&buf, SVG, testFigure()))
	assertSVG(t, buf.Bytes(), "sigma of the kept vectors only")
}

// assertSVG checks that data is well-formed XML whose root is <svg> and
// whose text holds want.
func assertSVG(t *testing.T, data []byte, want string) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	var text bytes.Buffer
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
		}
	}
	assert.Equal(t, "svg", root)
	assert.Contains(t, text.String(), want)
}

func TestWriteParts(t *testing.T) {
	f := testFigure()
	cases := []struct {
		name string
		fig  Figure
		ok   bool
	}{
		{"spectrum only", Figure{Spectrum: f.Spectrum}, true},
		{"layers only", Figure{Layers: f.Layers}, true},
		{"nothing", Figure{Layers: []LayerPoint{{Layer: -1, Role: "other"}}}, false},
		{"bands disagree with sigma", Figure{Spectrum: &Spectrum{Tensor: "x", Sigma: []float64{1, 0.5}, Bands: []Band{{8, 3}}}}, false},
		{"zero singular values", Figure{Spectrum: &Spectrum{Tensor: "x", Sigma: []float64{0, 0}, Bands: []Band{{2, 2}}}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Write(&buf, PNG, tc.fig)
			if !tc.ok {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			_, err = png.Decode(&buf)
			assert.NoError(t, err)
		})
	}
}

func TestFormatOf(t *testing.T) {
	for _, tc := range []struct {
		path, want string
	}{
		{"a.png", PNG}, {"dir/b.PNG", PNG}, {"c.svg", SVG}, {"d.pdf", ""}, {"png", ""},
	} {
		got, err := FormatOf(tc.path)
		if tc.want == "" {
			assert.ErrorIs(t, err, ErrFormat, tc.path)
			continue
		}
		require.NoError(t, err, tc.path)
		assert.Equal(t, tc.want, got, tc.path)
	}
	assert.ErrorIs(t, Write(io.Discard, "pdf", testFigure()), ErrFormat)
}
