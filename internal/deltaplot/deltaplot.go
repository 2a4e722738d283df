package deltaplot

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// ErrFormat reports an output format other than PNG or SVG.
var ErrFormat = errors.New("unsupported image format")

// Image formats Write produces.
const (
	PNG = "png"
	SVG = "svg"
)

// Band is a run of Count consecutive singular vectors quantized at Bits bits.
type Band struct {
	Bits, Count int
}

// Spectrum is the singular-value spectrum of one compressed matrix.
type Spectrum struct {
	// Tensor names the matrix.
	Tensor string
	// Sigma holds the singular values of the kept vectors, largest first.
	Sigma []float64
	// Bands partition Sigma in order; their counts sum to len(Sigma).
	Bands []Band
}

// LayerPoint is one compressed matrix's place in the per-layer panels.
type LayerPoint struct {
	// Layer is the transformer block index; points with a negative Layer
	// are left out.
	Layer int
	// Role names the matrix's family (q, k, v, o, gate, up, down, ...):
	// one line per role, in the order roles first appear in Layers.
	Role string
	// DeltaNorm is |Delta|_F, the size of the fine-tune's change to the
	// matrix. (Bits per weight would be flat: every matrix gets the same
	// share of its size.)
	DeltaNorm float64
	// RelError is |Delta - Delta_hat|_F / |Delta|_F.
	RelError float64
}

// Figure is what Write draws: the spectrum panel when Spectrum is set, the
// two per-layer panels when Layers holds a point with a layer index.
type Figure struct {
	Spectrum *Spectrum
	Layers   []LayerPoint
}

// FormatOf returns the image format named by path's extension, .png or
// .svg (any case), or an error wrapping ErrFormat.
func FormatOf(path string) (string, error) {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".png":
		return PNG, nil
	case ".svg":
		return SVG, nil
	default:
		return "", fmt.Errorf("%w: %q: want a .png or .svg file name", ErrFormat, path)
	}
}

// Panel size: wide enough for a readable legend beside 40-odd layers.
const (
	panelWidth  = 8 * vg.Inch
	panelHeight = 3.2 * vg.Inch
)

// Write draws f in format (PNG or SVG) to w. It returns an error wrapping
// ErrFormat for another format, and an error when f has nothing to draw.
func Write(w io.Writer, format string, f Figure) error {
	var plots []*plot.Plot
	if f.Spectrum != nil {
		p, err := spectrumPlot(f.Spectrum)
		if err != nil {
			return err
		}
		plots = append(plots, p)
	}
	layerPlots, err := layerPlots(f.Layers)
	if err != nil {
		return err
	}
	plots = append(plots, layerPlots...)
	if len(plots) == 0 {
		return errors.New("nothing to draw: no spectrum and no per-layer points")
	}
	height := panelHeight * vg.Length(len(plots))
	var c vg.CanvasWriterTo
	switch format {
	case PNG:
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(panelWidth, height), vgimg.UseDPI(100), vgimg.UseBackgroundColor(color.White))}
	case SVG:
		c = vgsvg.New(panelWidth, height)
	default:
		return fmt.Errorf("%w: %q", ErrFormat, format)
	}
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(rows, tiles, draw.New(c))
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("write %s: %w", format, err)
	}
	return nil
}

// bandColors gives each usual width a fixed colour, wide codes warm.
var bandColors = map[int]color.Color{
	8: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	4: color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	3: color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	2: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	1: color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

func bandColor(bits int) color.Color {
	if c, ok := bandColors[bits]; ok {
		return c
	}
	return plotutil.Color(bits)
}

// spectrumPlot draws sigma against its index on a log scale, one scatter
// per band.
func spectrumPlot(s *Spectrum) (*plot.Plot, error) {
	total := 0
	for _, b := range s.Bands {
		total += b.Count
	}
	if total != len(s.Sigma) {
		return nil, fmt.Errorf("tensor %q: bands hold %d vectors, sigma has %d", s.Tensor, total, len(s.Sigma))
	}
	p := plot.New()
	p.Title.Text = "singular values of " + s.Tensor
	p.X.Label.Text = "singular vector index"
	p.Y.Label.Text = "sigma (log scale)"
	p.Legend.Top = true
	p.Legend.Add("sigma of the kept vectors only: the archive stores no others")
	logY := false
	if slices.ContainsFunc(s.Sigma, func(x float64) bool { return x > 0 }) {
		p.Y.Scale, p.Y.Tick.Marker, logY = plot.LogScale{}, plot.TickerFunc(logTicks), true
	} else {
		p.Y.Label.Text = "sigma"
	}
	start := 0
	for _, b := range s.Bands {
		var pts plotter.XYs
		for i := start; i < start+b.Count; i++ {
			if logY && !(s.Sigma[i] > 0) {
				continue // a zero singular value has no place on a log axis
			}
			pts = append(pts, plotter.XY{X: float64(i), Y: s.Sigma[i]})
		}
		start += b.Count
		if len(pts) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", s.Tensor, err)
		}
		sc.GlyphStyle.Color = bandColor(b.Bits)
		sc.GlyphStyle.Shape = draw.CircleGlyph{}
		sc.GlyphStyle.Radius = vg.Points(2)
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%d bit: %d vectors", b.Bits, b.Count), sc)
	}
	return p, nil
}

// layerPlots draws the delta's norm and the relative error against the
// layer index, one line per role; none when no point has a layer.
func layerPlots(points []LayerPoint) ([]*plot.Plot, error) {
	byRole := map[string][]LayerPoint{}
	var roles []string
	for _, pt := range points {
		if pt.Layer < 0 {
			continue
		}
		if _, ok := byRole[pt.Role]; !ok {
			roles = append(roles, pt.Role)
		}
		byRole[pt.Role] = append(byRole[pt.Role], pt)
	}
	if len(roles) == 0 {
		return nil, nil
	}
	bits, errs := plot.New(), plot.New()
	bits.Title.Text = "size of the fine-tune's change |Delta|_F, per layer"
	bits.Y.Label.Text = "|Delta|_F"
	errs.Title.Text = "relative error |Delta - Delta_hat| / |Delta|, per layer"
	errs.Y.Label.Text = "relative error"
	for _, p := range []*plot.Plot{bits, errs} {
		p.X.Label.Text = "layer"
		p.Y.Min = 0
		p.Legend.Top = true
		p.Legend.Left = false
		p.X.Tick.Marker = plot.TickerFunc(integerTicks)
	}
	var maxBits, maxErr float64
	for i, role := range roles {
		pts := byRole[role]
		slices.SortStableFunc(pts, func(a, b LayerPoint) int { return a.Layer - b.Layer })
		bxy, exy := make(plotter.XYs, len(pts)), make(plotter.XYs, len(pts))
		for j, pt := range pts {
			bxy[j] = plotter.XY{X: float64(pt.Layer), Y: pt.DeltaNorm}
			exy[j] = plotter.XY{X: float64(pt.Layer), Y: pt.RelError}
			maxBits, maxErr = max(maxBits, pt.DeltaNorm), max(maxErr, pt.RelError)
		}
		for _, panel := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{bits, bxy}, {errs, exy}} {
			l, s, err := plotter.NewLinePoints(panel.xys)
			if err != nil {
				return nil, fmt.Errorf("role %s: %w", role, err)
			}
			c := plotutil.Color(i)
			l.Color, s.Color = c, c
			s.Shape = plotutil.Shape(i)
			panel.p.Add(l, s)
			panel.p.Legend.Add(role, l, s)
		}
	}
	// Head room above the highest point keeps the lines clear of the legend,
	// which has one row per role.
	headroom := 1 + 0.12*float64(len(roles))
	bits.Y.Max, errs.Y.Max = maxBits*headroom, maxErr*headroom
	return []*plot.Plot{bits, errs}, nil
}

// logTicks marks 1, 2 and 5 times each power of ten in [lo, hi], all
// labelled: a spectrum often spans less than one decade, where gonum's
// LogTicks would label a single value.
func logTicks(lo, hi float64) []plot.Tick {
	if !(lo > 0) || !(hi >= lo) || math.IsInf(hi, 0) {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if x := m * math.Pow(10, e); x >= lo && x <= hi {
				ticks = append(ticks, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'g', -1, 64)})
			}
		}
	}
	if len(ticks) < 2 {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	return ticks
}

// integerTicks marks whole layer numbers, about ten of them labelled;
// over implausibly many layers it falls back to gonum's default ticks.
func integerTicks(lo, hi float64) []plot.Tick {
	const maxLayers = 10000
	if !(hi-lo <= maxLayers) {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	step := max(1, int((hi-lo)/10+0.5))
	var ticks []plot.Tick
	for x := int(lo); float64(x) <= hi; x++ {
		if float64(x) < lo {
			continue
		}
		label := ""
		if x%step == 0 {
			label = fmt.Sprint(x)
		}
		ticks = append(ticks, plot.Tick{Value: float64(x), Label: label})
	}
	return ticks
}
