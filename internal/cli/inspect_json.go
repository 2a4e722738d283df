package cli

import (
	"math"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

// inspectSchema names and versions the inspect --json document
// (docs/JSON.md); a change that removes or retypes a field bumps it.
const inspectSchema = "deltacome.inspect/1"

// inspectJSON is the inspect --json document; docs/JSON.md describes it.
type inspectJSON struct {
	Schema       string                `json:"schema"`
	Archive      string                `json:"archive"`
	ArchiveBytes int64                 `json:"archive_bytes"`
	HeaderBytes  int64                 `json:"header_bytes"`
	Format       string                `json:"format"`
	Version      int                   `json:"version"`
	Tool         string                `json:"tool"`
	Settings     archive.Settings      `json:"settings"`
	Base         baseJSON              `json:"base"`
	Shards       []string              `json:"shards"`
	SideFiles    []sideFileJSON        `json:"side_files"`
	Tensors      []tensorJSON          `json:"tensors"`
	Totals       totalsJSON            `json:"totals"`
	ByKind       map[string]totalsJSON `json:"by_kind"`
	ByRole       map[string]totalsJSON `json:"by_role"`
}

type baseJSON struct {
	Fingerprint string `json:"fingerprint"`
	Source      string `json:"source,omitempty"`
	Tensors     int    `json:"tensors"`
}

type sideFileJSON struct {
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	StoredBytes int64  `json:"stored_bytes"`
}

type tensorJSON struct {
	Name        string         `json:"name"`
	Shape       []uint64       `json:"shape"`
	DType       string         `json:"dtype"`
	Kind        string         `json:"kind"`
	Role        string         `json:"role"`
	Layer       *int           `json:"layer"`
	OrigBytes   int64          `json:"original_bytes"`
	StoredBytes int64          `json:"stored_bytes"`
	Ratio       *float64       `json:"ratio"`
	Rank        *int           `json:"rank,omitempty"`
	Bands       []archive.Band `json:"bands,omitempty"`
	Budget      *int64         `json:"budget,omitempty"`
	RelError    *float64       `json:"rel_error,omitempty"`
	EnergyKept  *float64       `json:"energy_kept,omitempty"`
	// Calibration, HRelError and HRelErrorDataFree are the lowrank-sym
	// record's, in an archive made with calibration statistics.
	Calibration       string   `json:"calibration,omitempty"`
	HRelError         *float64 `json:"h_rel_error,omitempty"`
	HRelErrorDataFree *float64 `json:"h_rel_error_data_free,omitempty"`
}

type totalsJSON struct {
	Tensors       int      `json:"tensors"`
	Lossy         int      `json:"lossy_tensors"`
	OrigBytes     int64    `json:"original_bytes"`
	StoredBytes   int64    `json:"stored_bytes"`
	Ratio         *float64 `json:"ratio"`
	BitsPerWeight float64  `json:"bits_per_weight"`
	RelError      *float64 `json:"rel_error"`
}

// groupTotals sums a group of tensor records (a kind, a role, the archive).
type groupTotals struct {
	tensors, lossy int
	orig, stored   int64
	elements       int64
	errSq, normSq  float64
}

func (g *groupTotals) add(rec *archive.Tensor) {
	g.tensors++
	g.orig += rec.Bytes
	g.stored += rec.StoredBytes()
	n := int64(1)
	for _, d := range rec.Shape {
		n *= int64(d)
	}
	g.elements += n
	if rel, norm, ok := rec.DeltaError(); ok {
		g.lossy++
		g.errSq += rel * norm * rel * norm
		g.normSq += norm * norm
	}
}

// relError is the aggregate sqrt(sum err^2 / sum |Delta|^2) of the lossy
// tensors; ok is false when there are none or their deltas are all zero.
func (g *groupTotals) relError() (float64, bool) {
	if g.normSq == 0 {
		return 0, false
	}
	return math.Sqrt(g.errSq / g.normSq), true
}

// bitsPerWeight is the stored bits per tensor element.
func (g *groupTotals) bitsPerWeight() float64 {
	if g.elements == 0 {
		return 0
	}
	return float64(g.stored) * 8 / float64(g.elements)
}

func (g *groupTotals) json() totalsJSON {
	t := totalsJSON{Tensors: g.tensors, Lossy: g.lossy, OrigBytes: g.orig, StoredBytes: g.stored,
		Ratio: ratioPtr(g.orig, g.stored), BitsPerWeight: g.bitsPerWeight()}
	if rel, ok := g.relError(); ok {
		t.RelError = &rel
	}
	return t
}

// ratioPtr is orig/stored, nil (JSON null) when nothing is stored.
func ratioPtr(orig, stored int64) *float64 {
	if stored == 0 {
		return nil
	}
	r := float64(orig) / float64(stored)
	return &r
}

// groupBy totals the manifest's tensors by key.
func groupBy(m *archive.Manifest, key func(*archive.Tensor) string) map[string]*groupTotals {
	out := map[string]*groupTotals{}
	for i := range m.Tensors {
		rec := &m.Tensors[i]
		k := key(rec)
		if out[k] == nil {
			out[k] = &groupTotals{}
		}
		out[k].add(rec)
	}
	return out
}

func newInspectJSON(r *engine.Report) inspectJSON {
	m := r.Manifest
	res := inspectJSON{Schema: inspectSchema, Archive: r.Path, ArchiveBytes: r.Size, Format: m.Format, Version: m.Version,
		Tool: m.Tool, Settings: m.Settings, Base: baseJSON{Fingerprint: m.Base.Fingerprint, Source: m.Base.Source, Tensors: len(m.Base.Tensors)},
		Shards: []string{}, SideFiles: []sideFileJSON{}, Tensors: []tensorJSON{},
		ByKind: map[string]totalsJSON{}, ByRole: map[string]totalsJSON{}}
	for _, s := range m.Layout.Shards {
		res.Shards = append(res.Shards, s.File)
	}
	for _, f := range m.SideFiles {
		res.SideFiles = append(res.SideFiles, sideFileJSON{Name: f.Name, Size: f.Size, StoredBytes: f.Blob.Size})
	}
	var all groupTotals
	for i := range m.Tensors {
		t := &m.Tensors[i]
		all.add(t)
		tj := tensorJSON{Name: t.Name, Shape: t.Shape, DType: t.DType, Kind: t.Kind, Role: engine.Role(t.Name),
			OrigBytes: t.Bytes, StoredBytes: t.StoredBytes(), Ratio: ratioPtr(t.Bytes, t.StoredBytes())}
		if l := engine.Layer(t.Name); l >= 0 {
			tj.Layer = &l
		}
		if rel, _, ok := t.DeltaError(); ok {
			tj.RelError = &rel
		}
		rep := report(t)
		tj.Rank, tj.Bands, tj.Budget, tj.EnergyKept = rep.Rank, rep.Bands, rep.Budget, rep.EnergyKept
		if lr := t.LowRankSym; lr != nil && lr.Calibration != "" {
			tj.Calibration = lr.Calibration
			if lr.HRelErrorDataFree > 0 {
				tj.HRelError, tj.HRelErrorDataFree = &lr.HRelError, &lr.HRelErrorDataFree
			}
		}
		res.Tensors = append(res.Tensors, tj)
	}
	res.HeaderBytes = r.Size - all.stored - sideBytes(m)
	res.Totals = all.json()
	for k, g := range groupBy(m, func(t *archive.Tensor) string { return t.Kind }) {
		res.ByKind[k] = g.json()
	}
	for k, g := range groupBy(m, func(t *archive.Tensor) string { return engine.Role(t.Name) }) {
		res.ByRole[k] = g.json()
	}
	return res
}
