package cli

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/deltacome/deltacome/internal/deltaplot"
	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

// writePlot draws the inspect figure of report r into path (.png or .svg):
// the spectrum of tensor (the first low-rank tensor when ""), and the bits
// and error per layer. The file is written under a temporary name and
// renamed when complete.
func writePlot(r *engine.Report, path, tensor string) error {
	format, err := deltaplot.FormatOf(path)
	if err != nil {
		return usageError{fmt.Errorf("--plot: %w", err)}
	}
	var fig deltaplot.Figure
	rec, err := spectrumTensor(r.Manifest, tensor)
	if err != nil {
		return err
	}
	if rec != nil {
		if fig.Spectrum, err = readSpectrum(r.Path, rec); err != nil {
			return err
		}
	}
	for _, role := range engine.Roles() { // one pass per role: legend in report order
		for i := range r.Manifest.Tensors {
			t := &r.Manifest.Tensors[i]
			rel, norm, ok := t.DeltaError()
			if !ok || engine.Role(t.Name) != role {
				continue
			}
			fig.Layers = append(fig.Layers, deltaplot.LayerPoint{Layer: engine.Layer(t.Name), Role: role,
				DeltaNorm: norm, RelError: rel})
		}
	}
	return writeFileAtomic(path, func(w io.Writer) error { return deltaplot.Write(w, format, fig) })
}

// spectrumTensor returns the record whose spectrum to draw: the named one,
// which must be stored low-rank, or the first low-rank tensor of rank > 0
// (nil when there is none).
func spectrumTensor(m *archive.Manifest, name string) (*archive.Tensor, error) {
	for i := range m.Tensors {
		t := &m.Tensors[i]
		switch {
		case name == "" && quantizedRank(t) > 0:
			return t, nil
		case name != "" && t.Name == name:
			if quantizedRank(t) == 0 {
				return nil, usageError{fmt.Errorf("--tensor %q is stored as %s with no singular vectors kept: only low-rank tensors (kind lowrank or lowrank-sym, rank > 0) have a spectrum in the archive", name, t.Kind)}
			}
			return t, nil
		}
	}
	if name != "" {
		return nil, usageError{fmt.Errorf("--tensor %q: no such tensor in the archive", name)}
	}
	return nil, nil
}

// quantizedRank is the rank of a tensor stored as quantized singular
// vectors (kind lowrank or lowrank-sym), 0 for the other kinds.
func quantizedRank(t *archive.Tensor) int {
	switch {
	case t.Kind == archive.KindLowRank && t.LowRank != nil:
		return t.LowRank.Rank
	case t.Kind == archive.KindLowRankSym && t.LowRankSym != nil:
		return t.LowRankSym.Rank
	}
	return 0
}

// readSpectrum reads the singular values of a low-rank tensor, its
// blobs' checksums verified: the sigma blob (float32, little-endian, one
// per kept vector) of kind lowrank, the norms of the decoded rank-1 terms
// of kind lowrank-sym.
func readSpectrum(path string, rec *archive.Tensor) (*deltaplot.Spectrum, error) {
	ar, err := archive.Open(path)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	blob := func(role string) ([]byte, error) {
		b, ok := rec.Blob(role)
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: low-rank record without a %s blob", archive.ErrFormat, rec.Name, role)
		}
		raw, err := ar.Blob(b)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
		}
		return raw, nil
	}
	s := &deltaplot.Spectrum{Tensor: rec.Name}
	var bands []archive.Band
	if sym := rec.LowRankSym; sym != nil {
		var f svdquant.SymFactors
		for _, b := range []struct {
			role string
			dst  *[]byte
		}{{archive.RoleUCodes, &f.UCodes}, {archive.RoleUScales, &f.UScales}, {archive.RoleVCodes, &f.VCodes}, {archive.RoleVScales, &f.VScales}} {
			if *b.dst, err = blob(b.role); err != nil {
				return nil, err
			}
		}
		if s.Sigma, err = f.PairNorms(int(rec.Shape[0]), int(rec.Shape[1]), sym); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
		}
		bands = sym.Bands
	} else {
		raw, err := blob(archive.RoleSigma)
		if err != nil {
			return nil, err
		}
		lr := rec.LowRank
		if len(raw) != 4*lr.Rank {
			return nil, fmt.Errorf("%w: tensor %q: sigma blob of %d bytes for rank %d", archive.ErrFormat, rec.Name, len(raw), lr.Rank)
		}
		s.Sigma = make([]float64, lr.Rank)
		for i := range s.Sigma {
			s.Sigma[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		}
		bands = lr.Bands
	}
	for _, band := range bands {
		s.Bands = append(s.Bands, deltaplot.Band{Bits: band.Bits, Count: band.Count})
	}
	return s, nil
}

// writeFileAtomic writes path through write into a temporary file in the
// same folder, renamed into place only when complete.
func writeFileAtomic(path string, write func(w io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	werr := write(f)
	if werr == nil {
		werr = f.Chmod(0o644)
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), path)
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}

// renderRoles prints the totals per tensor role.
func renderRoles(out io.Writer, m *archive.Manifest) error {
	groups := groupBy(m, func(t *archive.Tensor) string { return engine.Role(t.Name) })
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "role\ttensors\tstored\toriginal\tratio\tbits/weight\terror\t")
	for _, role := range engine.Roles() {
		g := groups[role]
		if g == nil {
			continue
		}
		rel := ""
		if e, ok := g.relError(); ok {
			rel = fmt.Sprintf("%.4f", e)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.3f\t%s\t\n", role, g.tensors, size(g.stored), size(g.orig), ratioString(g.orig, g.stored), g.bitsPerWeight(), rel)
	}
	return tw.Flush()
}
