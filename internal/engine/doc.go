// Package engine runs deltacome's use cases: Compress (BASE + FT -> archive),
// Reconstruct (BASE + archive -> checkpoint), Inspect (archive -> report),
// Verify (archive against FT), Compare (the methods side by side),
// ExportLoRA (BASE + FT or archive -> PEFT adapter) and Merge (the parts
// that Compress writes with a Shard, one per worker -> the archive; the
// split is in shard.go).
//
// Each use case opens its inputs, plans the work tensor by tensor, runs it on
// a bounded pool of workers whose results are consumed in tensor order (so
// outputs are byte-identical whatever the worker count), and writes its
// output under a temporary name that is renamed into place only when
// complete. Memory is bounded by the tensors in flight: checkpoints are
// memory-mapped and read on demand.
//
// Compress with calibration statistics (calibration.go, docs/CALIBRATION.md)
// checks them against the fine-tune's layout before any work and hands each
// projection the Gram matrix of its input site.
//
// Outputs never overwrite an input (output.go), and what a user should know
// before trusting a result is reported as a Warning (warnings.go).
//
// The engine does not print; progress and warnings go out through the
// Progress interface. Errors wrap the sentinels of this package and of pkg/archive so
// that callers can map them to exit codes.
package engine
