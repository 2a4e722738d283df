package engine

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/par"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// Metadata keys and values of a statistics file (docs/CALIBRATION.md).
const (
	// CalibVersionKey holds the statistics format version, CalibVersion.
	CalibVersionKey = "deltacome_calibration"
	// CalibVersion is the statistics format version this package reads
	// and writes.
	CalibVersion = "1"
	// CalibTokensKey holds the number of tokens measured, in decimal.
	CalibTokensKey = "tokens"
	// CalibTextKey and CalibTextSHA256Key hold the calibration text's file
	// name and its hex SHA-256.
	CalibTextKey       = "text"
	CalibTextSHA256Key = "text_sha256"
	// CalibFingerprintKey holds the fingerprint (deltacome fingerprint) of
	// the checkpoint the statistics were measured on.
	CalibFingerprintKey = "fingerprint"
)

// Below these token counts compress warns that the statistics are too thin
// to trust (docs/CALIBRATION.md): 16 windows of 256 tokens of the
// fine-tune's own domain were the least that helped in the study behind
// the feature; generic text needs 64. The file does not say which kind of
// text it holds, so the warning names both.
const (
	calibMinInDomain = 16 * 256
	calibMinGeneric  = 64 * 256
)

// maxSiteWidth bounds the input width a statistics tensor may claim before
// its values are read: wider than any projection of a released model (the
// widest inputs are MoE or 405B MLP down projections, 53248).
const maxSiteWidth = 1 << 17

// CalibrationError reports statistics that cannot be used for the
// fine-tune: the file, the tensor concerned ("" for the file as a whole)
// and what is wrong. It wraps ErrInput.
type CalibrationError struct {
	File, Tensor, Problem string
}

func (e *CalibrationError) Error() string {
	if e.Tensor == "" {
		return fmt.Sprintf("calibration statistics %s: %s", e.File, e.Problem)
	}
	return fmt.Sprintf("calibration statistics %s: tensor %q: %s", e.File, e.Tensor, e.Problem)
}

// Unwrap returns ErrInput.
func (e *CalibrationError) Unwrap() error { return ErrInput }

// sharedSites maps a projection's module name to the input site it shares
// with its siblings: they read the same input, so one Gram matrix serves
// them all. Any other projection is a site of its own, named after itself.
var sharedSites = map[string]string{
	"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
	"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
}

// CalibrationSite returns the name of the statistics tensor for the input
// of projection name ("model.layers.3.self_attn.k_proj.weight" ->
// "model.layers.3.self_attn.qkv_proj"): the module path without ".weight",
// its last part replaced through sharedSites. It returns "" for a name
// that is not a "*.weight".
func CalibrationSite(name string) string {
	module, ok := strings.CutSuffix(name, ".weight")
	if !ok {
		return ""
	}
	parent, last := "", module
	if i := strings.LastIndexByte(module, '.'); i >= 0 {
		parent, last = module[:i+1], module[i+1:]
	}
	if s, ok := sharedSites[last]; ok {
		last = s
	}
	return parent + last
}

// calibStats is an opened statistics file, checked against a fine-tune.
type calibStats struct {
	path   string
	f      *stfile.File
	record archive.Calibration
	width  map[string]int // site -> input width
}

// openCalibration opens the statistics at path and checks them, and their
// layout against the lossy projections of ft (names): every tensor F32,
// 1-D, a packed triangle of a site some 2-D weight of ft reads, of that
// weight's input width, finite, with no negative diagonal entry. Problems
// are *CalibrationError. It returns the warnings to give: thin statistics,
// projections without a site.
func openCalibration(path string, base, ft *checkpoint.Checkpoint, opt *CompressOptions) (*calibStats, []Warning, error) {
	f, err := stfile.Open(path)
	if err != nil {
		return nil, nil, &CalibrationError{File: path, Problem: err.Error()}
	}
	s := &calibStats{path: path, f: f, width: map[string]int{}}
	warns, err := s.check(base, ft, opt)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return s, warns, nil
}

// Close releases the statistics file.
func (s *calibStats) Close() error { return s.f.Close() }

func (s *calibStats) fail(tensor, format string, args ...any) error {
	return &CalibrationError{File: s.path, Tensor: tensor, Problem: fmt.Sprintf(format, args...)}
}

func (s *calibStats) check(base, ft *checkpoint.Checkpoint, opt *CompressOptions) ([]Warning, error) {
	md := s.f.Metadata()
	if v := md[CalibVersionKey]; v != CalibVersion {
		return nil, s.fail("", "__metadata__ %q is %q, want %q: not deltacome calibration statistics, or of another version", CalibVersionKey, v, CalibVersion)
	}
	tokens, err := strconv.ParseInt(md[CalibTokensKey], 10, 64)
	if err != nil || tokens < 1 {
		return nil, s.fail("", "__metadata__ %q is %q, want a positive token count", CalibTokensKey, md[CalibTokensKey])
	}
	s.record = archive.Calibration{File: sourceName(s.path), Tokens: tokens, Text: md[CalibTextKey],
		TextSHA256: md[CalibTextSHA256Key], Fingerprint: md[CalibFingerprintKey], Sites: s.f.Len()}

	// The input width of every site some 2-D weight of FT reads, and the
	// lossy projections of each site.
	widths := map[string]int{}
	readers := map[string]string{} // site -> the first weight reading it
	var lossy []string
	for _, name := range ft.Names() {
		t, _ := ft.Tensor(name)
		site := CalibrationSite(name)
		if len(t.Shape) != 2 || site == "" {
			continue
		}
		if w, ok := widths[site]; ok && w != int(t.Shape[1]) {
			// Two weights that the naming rule gives one site but that
			// read inputs of different widths: the rule does not fit this
			// family, and the site is unusable for either.
			widths[site] = -1
		} else if !ok {
			widths[site], readers[site] = int(t.Shape[1]), name
		}
		if class, err := classify(base, ft, name, opt); err == nil && class == classLossy {
			lossy = append(lossy, name)
		}
	}
	for _, name := range s.f.Names() {
		info, _ := s.f.Info(name)
		want, ok := widths[name]
		switch {
		case !ok:
			return nil, s.fail(name, "no weight of the fine-tune %s reads this input site: the statistics were measured on another model layout", ft.Path())
		case want < 0:
			return nil, s.fail(name, "weights of different input widths map to this site; remove it from the statistics")
		case info.DType != safetensors.F32 || len(info.Shape) != 1:
			return nil, s.fail(name, "is %s %v, want F32 of one dimension (a packed upper triangle)", info.DType, info.Shape)
		}
		n := triangleSide(info.Shape[0])
		if n < 0 || n > maxSiteWidth {
			return nil, s.fail(name, "holds %d values, not n(n+1)/2 for an input width n up to %d", info.Shape[0], maxSiteWidth)
		}
		if n != want {
			return nil, s.fail(name, "is the Gram matrix of %d inputs, but %q of the fine-tune reads %d: the statistics were measured on another model layout", n, readers[name], want)
		}
		s.width[name] = n
	}
	if err := s.checkValues(); err != nil {
		return nil, err
	}
	var warns []Warning
	if tokens < calibMinGeneric {
		warns = append(warns, Warning{Code: WarnThinCalibration, Subject: s.path, Message: fmt.Sprintf(
			"the statistics were measured on %d tokens, fewer than the %d (64 x 256) generic text needs to help, or the %d (16 x 256) of the fine-tune's own domain; below those calibration measured worse than data-free", tokens, calibMinGeneric, calibMinInDomain)})
	}
	var missing []string
	for _, name := range lossy {
		if _, ok := s.width[CalibrationSite(name)]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		warns = append(warns, Warning{Code: WarnNoCalibrationSite, Message: fmt.Sprintf(
			"%d projections have no input site in %s and are compressed data-free: %s", len(missing), s.path, listNames(missing))})
	}
	return warns, nil
}

// triangleSide returns n for a packed triangle of l = n(n+1)/2 values, or
// -1.
func triangleSide(l uint64) int {
	n := uint64((math.Sqrt(8*float64(l)+1) - 1) / 2)
	for _, c := range []uint64{n - 1, n, n + 1} {
		if c < 1<<32 && c*(c+1)/2 == l && c > 0 {
			return int(c)
		}
	}
	return -1
}

// checkValues reads every site once: each value finite, each diagonal
// entry (the sum of an input's squares) not negative.
func (s *calibStats) checkValues() error {
	names := s.f.Names()
	errs := make([]error, len(names))
	par.Each(len(names), func(i int) {
		name := names[i]
		data, err := s.f.Data(name)
		if err != nil {
			errs[i] = s.fail(name, "%v", err)
			return
		}
		n, k := s.width[name], 0
		for r := range n {
			for c := r; c < n; c++ {
				v := math.Float32frombits(binary.LittleEndian.Uint32(data[4*k:]))
				k++
				switch {
				case v-v != 0:
					errs[i] = s.fail(name, "entry (%d, %d) is %v", r, c, v)
					return
				case c == r && v < 0:
					errs[i] = s.fail(name, "diagonal entry %d is %v: a Gram matrix has none below 0", r, v)
					return
				}
			}
		}
		s.f.Release(name)
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// calibration returns the statistics of projection name (input width
// cols) expanded to the full symmetric matrix svdquant reads, or nil when
// the statistics have no site for it.
func (s *calibStats) calibration(name string, cols int) (*svdquant.Calibration, error) {
	site := CalibrationSite(name)
	n, ok := s.width[site]
	if !ok {
		return nil, nil
	}
	if n != cols {
		return nil, s.fail(site, "is the Gram matrix of %d inputs, but %q reads %d", n, name, cols)
	}
	data, err := s.f.Data(site)
	if err != nil {
		return nil, s.fail(site, "%v", err)
	}
	h := make([]float32, n*n)
	k := 0
	for i := range n {
		for j := i; j < n; j++ {
			v := math.Float32frombits(binary.LittleEndian.Uint32(data[4*k:]))
			h[i*n+j], h[j*n+i] = v, v
			k++
		}
	}
	return &svdquant.Calibration{H: h}, nil
}

// storeCalibrated stores a projection as KindLowRankSym with its input
// statistics from s, if s has a site for it; one without is encoded
// data-free and recorded as such.
func (e *encoded) storeCalibrated(in *storage.Input, s *calibStats) error {
	c, err := s.calibration(e.rec.Name, in.Cols)
	if err != nil {
		return err
	}
	in.Options.Calibration = c
	if err := e.store(archive.KindLowRankSym, in); err != nil {
		return err
	}
	if c == nil && e.rec.LowRankSym != nil {
		e.rec.LowRankSym.Calibration = CalibNoStatistics
	}
	return nil
}

// CalibNoStatistics is archive.LowRankSym.Calibration for a projection the
// statistics have no site for (svdquant.CalibKept and its siblings name
// the others).
const CalibNoStatistics = "no-statistics"

// modelWarning compares the fingerprint the statistics record with the
// fine-tune's, computed from the records of all its tensors (each holding
// its SHA-256): a mismatch is a warning, not a refusal, since the layout
// matched (statistics measured on the base, or on an earlier checkpoint of
// the fine-tune, are still statistics of the same inputs).
func (s *calibStats) modelWarning(tensors []archive.Tensor) (Warning, bool) {
	bt := make([]archive.BaseTensor, len(tensors))
	for i, t := range tensors {
		bt[i] = archive.BaseTensor{Name: t.Name, DType: t.DType, Shape: t.Shape, SHA256: t.SHA256}
	}
	fp := archive.Fingerprint(bt)
	switch s.record.Fingerprint {
	case fp:
		return Warning{}, false
	case "":
		return Warning{Code: WarnCalibrationModel, Subject: s.path, Message: fmt.Sprintf(
			"the statistics record no model fingerprint; the fine-tune's is %s (scripts/calibrate.py writes it)", fp)}, true
	}
	return Warning{Code: WarnCalibrationModel, Subject: s.path, Message: fmt.Sprintf(
		"the statistics were measured on the checkpoint of fingerprint %s, not on this fine-tune (%s); its layout matches, so they were used", s.record.Fingerprint, fp)}, true
}

// PackTriangle returns the upper triangle of h (row-major n x n), row by
// row: the n(n+1)/2 values a statistics tensor holds.
func PackTriangle(h []float32, n int) []float32 {
	out := make([]float32, 0, n*(n+1)/2)
	for i := range n {
		out = append(out, h[i*n+i:(i+1)*n]...)
	}
	return out
}

// WriteCalibration writes a statistics file at path (docs/CALIBRATION.md):
// one F32 tensor per site in sites (site name -> packed triangle, see
// PackTriangle), in name order, and the metadata meta beside the format
// version, which it sets. The file is written under a temporary name and
// renamed when complete.
func WriteCalibration(path string, sites map[string][]float32, meta map[string]string) error {
	names := slices.Sorted(maps.Keys(sites))
	infos := make([]stfile.Info, len(names))
	var off int64
	for i, n := range names {
		size := 4 * int64(len(sites[n]))
		infos[i] = stfile.Info{Name: n, DType: safetensors.F32, Shape: []uint64{uint64(len(sites[n]))}, Offset: off, Size: size}
		off += size
	}
	md := maps.Clone(meta)
	if md == nil {
		md = map[string]string{}
	}
	md[CalibVersionKey] = CalibVersion
	header, err := stfile.EncodeHeader(infos, md)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".calibration-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	w := bufio.NewWriter(tmp)
	err = stfile.WriteHeader(w, header)
	var b [4]byte
	for _, n := range names {
		for _, v := range sites[n] {
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			if err == nil {
				_, err = w.Write(b[:])
			}
		}
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
