package engine

import (
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/pkg/archive"
)

// Event reports one finished tensor.
type Event struct {
	// Index is the tensor's 0-based position, Total the number of tensors.
	Index, Total int
	Name         string
	Shape        []uint64
	DType        string
	// Kind is the storage kind (pkg/archive Kind* constants).
	Kind string
	// Rank is the rank kept by a low-rank kind ("lowrank", "lowrank-bf16");
	// Bands the bit bands of kind "lowrank".
	Rank  int
	Bands string
	// OrigBytes is the tensor's size in the checkpoint, StoredBytes what the
	// archive holds for it (compress) or what was written (reconstruct).
	OrigBytes, StoredBytes int64
	// RelError is the relative error of a low-rank delta; 0 otherwise.
	RelError float64
	// SVDFallback says why the SVD route asked for was not the one used
	// (archive.LowRank.SVDFallback); "" when it was.
	SVDFallback string
}

// Progress receives progress from a running use case. Methods are called
// from one goroutine at a time, in tensor order.
type Progress interface {
	// Begin announces the number of tensors and their total size in bytes.
	Begin(total int, totalBytes int64)
	// Tensor reports a finished tensor.
	Tensor(ev Event)
	// Warn reports something the user should know about the result, as soon
	// as it is known (see Warning).
	Warn(w Warning)
}

// NoProgress discards progress.
type NoProgress struct{}

// Begin implements Progress.
func (NoProgress) Begin(int, int64) {}

// Tensor implements Progress.
func (NoProgress) Tensor(Event) {}

// Warn implements Progress.
func (NoProgress) Warn(Warning) {}

// tensorEvent is the event of the finished tensor rec, the i-th (0-based)
// of total.
func tensorEvent(i, total int, rec *archive.Tensor) Event {
	ev := Event{Index: i, Total: total, Name: rec.Name, Shape: rec.Shape, DType: rec.DType,
		Kind: rec.Kind, OrigBytes: rec.Bytes, StoredBytes: rec.StoredBytes()}
	if k, ok := storage.Lookup(rec.Kind); ok {
		r := k.Report(rec)
		if r.Rank != nil {
			ev.Rank = *r.Rank
		}
		ev.Bands, ev.SVDFallback = BandsString(r.Bands), r.SVDFallback
	}
	ev.RelError, _, _ = rec.DeltaError()
	return ev
}

// FirstPassProgress is implemented by a Progress that wants to hear of the
// first pass Compress makes over the projections for an error target or a
// model-wide budget (target.go), before Begin: one call per projection
// whose curve is done, in order, done counting from 1 to total.
type FirstPassProgress interface {
	FirstPass(done, total int, name string)
}
