// Package delta reconstructs the tensors of a deltacome archive: given the
// archive and the base checkpoint it was made against, Reader.Tensor
// returns any fine-tune tensor's bytes, and Reader.Float32 its values,
// without writing a checkpoint.
//
// It decodes every storage kind (same, xor, full, lowrank, bitdelta,
// lowrank-bf16; docs/FORMAT.md section 2.5) with the decoders `deltacome
// reconstruct` uses, so its bytes are those reconstruct writes. Like
// reconstruct it checks the base: its tensor names, dtypes and shapes when
// opened, the SHA-256 of each base tensor it reads, and the SHA-256 of
// every tensor stored bit-exact; the archive itself is validated by
// pkg/archive when opened, each blob's CRC-32C as it is read.
//
// A minimal program:
//
//	r, err := delta.Open("base", "math.dcm")
//	if err != nil { ... }
//	defer r.Close()
//	w, err := r.Float32("model.layers.0.mlp.up_proj.weight")
package delta
