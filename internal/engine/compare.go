package engine

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/pkg/archive"
)

// DefaultCompareRatios are the ratios Compare measures when none are given.
var DefaultCompareRatios = []float64{8, 16, 32}

// CompareOptions configures Compare. Schedule, GroupSize, Select, Workers
// and Tool are passed to every Compress run as in CompressOptions.
type CompareOptions struct {
	// Methods to measure, in report order; nil means Methods.
	Methods []string
	// Ratios to measure each method at, in report order; nil means
	// DefaultCompareRatios. MethodBitDelta has a fixed size and is measured
	// once, whatever the ratios.
	Ratios    []float64
	Schedule  alloc.Schedule
	GroupSize int
	// Grid and Refit apply to MethodDeltaCoMe as in CompressOptions.
	Grid    string
	Refit   int
	Select  *Selector
	Workers int
	Tool    string
	// KeepDir, when not "", is the folder (created if missing) the archives
	// are written to and kept in, named by ArchiveName. Otherwise they are
	// written to a temporary folder and removed once measured.
	KeepDir string
	// Progress receives the tensor events of every Compress run; nil means
	// none.
	Progress Progress
	// Measured, when not nil, is called with each row as soon as it is
	// measured, in report order.
	Measured func(row *CompareRow)
}

// ErrorGroup is the aggregate relative error of a group of projections:
// sqrt(sum |Delta - Delta_hat|^2 / sum |Delta|^2) over its tensors.
type ErrorGroup struct {
	Role     string
	Tensors  int
	RelError float64
	errSq    float64
	normSq   float64
}

func (g *ErrorGroup) add(relError, deltaNorm float64) {
	e := relError * deltaNorm
	g.Tensors++
	g.errSq += e * e
	g.normSq += deltaNorm * deltaNorm
	if g.normSq > 0 {
		g.RelError = math.Sqrt(g.errSq / g.normSq)
	}
}

// CompareRow is one measured (method, ratio): every number is read back
// from the archive the real Compress wrote.
type CompareRow struct {
	Method string
	// Ratio is the ratio asked for; 0 for MethodBitDelta, whose size does
	// not depend on it.
	Ratio float64
	// Archive is the kept archive's path; "" when not kept.
	Archive string
	// ArchiveBytes is the archive file's size; OrigBytes the fine-tune's
	// tensor bytes.
	ArchiveBytes, OrigBytes int64
	// Projections counts the lossily stored projections. ProjStoredBytes is
	// what the archive stores for them; ProjFP16Bytes their size at 2 bytes
	// per element, the size --ratio divides.
	Projections                    int
	ProjStoredBytes, ProjFP16Bytes int64
	// RelError aggregates all lossy projections; ByRole per Role, in Roles
	// order, listing only roles present.
	RelError float64
	ByRole   []ErrorGroup
}

// ProjRatio returns ProjFP16Bytes / ProjStoredBytes, the measured ratio of
// the projections against fp16, or +Inf when nothing is stored.
func (r *CompareRow) ProjRatio() float64 {
	if r.ProjStoredBytes == 0 {
		return math.Inf(1)
	}
	return float64(r.ProjFP16Bytes) / float64(r.ProjStoredBytes)
}

// ArchiveName returns the file name Compare keeps the archive of a method
// at a ratio under: "deltacome-16.dcm", "lowrank-8.dcm", "bitdelta.dcm".
func ArchiveName(method string, ratio float64) string {
	if method == MethodBitDelta {
		return method + ".dcm"
	}
	return method + "-" + strconv.FormatFloat(ratio, 'g', -1, 64) + ".dcm"
}

// Compare compresses FT (ftPath) against BASE (basePath) with each method at
// each ratio through Compress, and reports the measured archive bytes and the
// projection errors recorded in each archive's manifest. It returns the
// rows in method order, then ratio order. Errors wrap ErrUsage for bad
// options and otherwise are Compress's.
func Compare(ctx context.Context, basePath, ftPath string, opt CompareOptions) ([]CompareRow, error) {
	methods, ratios := opt.Methods, opt.Ratios
	if methods == nil {
		methods = Methods
	}
	if ratios == nil {
		ratios = DefaultCompareRatios
	}
	for i, m := range methods {
		if m == "" || checkMethod(m, "") != nil {
			return nil, errorf(ErrUsage, "unknown method %q (want deltacome, bitdelta or lowrank)", m)
		}
		if slices.Contains(methods[:i], m) {
			return nil, errorf(ErrUsage, "method %q listed twice", m)
		}
	}
	for i, r := range ratios {
		if !(r >= 1) || math.IsInf(r, 0) {
			return nil, errorf(ErrUsage, "ratio must be finite and >= 1, got %v", r)
		}
		if slices.Contains(ratios[:i], r) {
			return nil, errorf(ErrUsage, "ratio %v listed twice", r)
		}
	}
	if len(methods) == 0 || len(ratios) == 0 {
		return nil, errorf(ErrUsage, "nothing to compare: no methods or no ratios")
	}

	dir := opt.KeepDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "deltacome-compare-*")
		if err != nil {
			return nil, fmt.Errorf("create temporary folder: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}

	var rows []CompareRow
	for _, m := range methods {
		rs := ratios
		if m == MethodBitDelta {
			rs = ratios[:1] // fixed size: one run says it all
		}
		for _, ratio := range rs {
			path := filepath.Join(dir, ArchiveName(m, ratio))
			co := CompressOptions{Mode: ModeDeltaCoMe, Method: m, Ratio: ratio, Schedule: opt.Schedule,
				GroupSize: opt.GroupSize, Select: opt.Select, Workers: opt.Workers, Tool: opt.Tool, Progress: opt.Progress}
			if m == MethodDeltaCoMe {
				co.Grid, co.Refit = opt.Grid, opt.Refit
			}
			if _, err := Compress(ctx, basePath, ftPath, path, co); err != nil {
				return nil, fmt.Errorf("%s at ratio %v: %w", m, ratio, err)
			}
			row, err := measureArchive(path)
			if err != nil {
				return nil, err
			}
			row.Method = m
			if m != MethodBitDelta {
				row.Ratio = ratio
			}
			if opt.KeepDir != "" {
				row.Archive = path
			} else if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("remove temporary archive: %w", err)
			}
			rows = append(rows, *row)
			if opt.Measured != nil {
				opt.Measured(&rows[len(rows)-1])
			}
		}
	}
	return rows, nil
}

// measureArchive reads a written archive's size and per-tensor records
// back into a row.
func measureArchive(path string) (*CompareRow, error) {
	rep, err := Inspect(path)
	if err != nil {
		return nil, fmt.Errorf("measure %s: %w", path, err)
	}
	row := &CompareRow{ArchiveBytes: rep.Size, OrigBytes: rep.Totals.OrigBytes}
	var all ErrorGroup
	groups := make(map[string]*ErrorGroup)
	for i := range rep.Manifest.Tensors {
		t := &rep.Manifest.Tensors[i]
		rel, norm, ok := t.DeltaError()
		if !ok {
			continue
		}
		row.Projections++
		row.ProjStoredBytes += t.StoredBytes()
		row.ProjFP16Bytes += fp16Bytes(t)
		all.add(rel, norm)
		role := Role(t.Name)
		if groups[role] == nil {
			groups[role] = &ErrorGroup{Role: role}
		}
		groups[role].add(rel, norm)
	}
	row.RelError = all.RelError
	for _, role := range Roles() {
		if g := groups[role]; g != nil {
			row.ByRole = append(row.ByRole, *g)
		}
	}
	return row, nil
}

// fp16Bytes is a tensor's size at 2 bytes per element.
func fp16Bytes(t *archive.Tensor) int64 {
	n := int64(2)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}
