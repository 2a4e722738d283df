// Package archive reads and writes deltacome archives: a fine-tune stored as
// the difference to its base model.
//
// An archive is one valid safetensors file. Its tensors are the stored
// blobs (packed codes and compressed bytes as U8, quantization parameters as
// BF16, singular values as F32), written back to back in the order they were
// added. Its __metadata__ holds two entries: MetadataKey, whose value is the
// JSON Manifest (format name and version, the settings used, the fingerprint
// of the base, the layout of the fine-tune's shards, and one record per
// fine-tune tensor saying how it is stored and with which checksums), and
// MetadataCRCKey, the CRC-32C of that JSON.
//
// Byte layout (little-endian, as in any safetensors file):
//
//	[8 bytes]  N, length of the header
//	[N bytes]  header JSON: {"__metadata__": {"deltacome.manifest": "<manifest JSON>",
//	                                          "deltacome.manifest.crc32c": "<8 hex digits>"},
//	                         "<blob name>": {"dtype", "shape", "data_offsets"}, ...}
//	           padded with spaces to a multiple of 8
//	[...]      blob bytes, contiguous, in header order
//
// Blobs with codec "zstd" hold a zstd frame; when Shuffle is k > 1 the
// decompressed bytes are byte planes: all first bytes of the k-byte elements,
// then all second bytes, and so on. docs/FORMAT.md in the repository is the
// normative specification; this package implements it.
//
// The package validates everything it reads from a file. Open and Parse
// check the header bounds and the manifest's checksum, then every manifest
// record against itself, the other records and the blobs of the file
// (docs/FORMAT.md section 4, the rules in validate.go), so that a caller may
// size its work from an accepted record; Reader.Blob checks each blob's
// CRC-32C and decoded size as it reads it. Errors wrap ErrFormat, ErrVersion
// or ErrChecksum.
//
// A part file (format PartFormatName, docs/FORMAT.md section 7) holds one
// worker's share of an archive's records and blobs. It is validated by the
// same rules, adapted to a share; OpenPart reads one, and Open refuses one
// with a *PartError.
package archive
