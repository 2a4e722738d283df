// Package storage holds the codec of every storage kind of the archive
// format (docs/FORMAT.md section 2.5) in one table: how a tensor is
// encoded as the kind, decoded back over its base, what it costs in
// stored bytes and in working memory, and what its record reports.
//
// pkg/archive's kind table says what the format requires of each kind
// (roles, validation); this table says how deltacome computes it. A new
// kind is one entry in each, and TestKindsMatchArchive checks that the two
// list the same kinds. The engine (compress, reconstruct, verify, plan,
// inspect, export-lora), inspect's rendering and pkg/delta reach the kinds
// only through this package (Lookup, ForMethod, DecodeTensor), so that
// every command, and every Go program, decodes a tensor the same way.
package storage
