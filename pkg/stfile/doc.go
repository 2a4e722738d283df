// Package stfile opens one safetensors file safely: it memory-maps the file
// read-only, validates the header far more strictly than the safetensors
// library does, and hands out tensor bytes as slices of the mapping.
//
// # Byte layout
//
// A safetensors file is
//
//	bytes [0, 8)        N, the header length, little-endian uint64
//	bytes [8, 8+N)      the header: one UTF-8 JSON object, often padded
//	                    with trailing spaces so that 8+N is a multiple of 8
//	bytes [8+N, EOF)    the data region: the tensors' raw little-endian bytes
//
// The header maps each tensor name to
// {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]},
// where begin and end are byte offsets relative to the start of the data
// region. An optional "__metadata__" entry maps strings to strings.
//
// # What Parse checks
//
// Beyond github.com/nlpodyssey/safetensors (which Parse also runs, as a
// cross-check), Parse rejects: files shorter than 8 bytes; a header length
// above [MaxHeaderSize] (checked before any further byte is read) or past the
// end of the file; a header that is not valid UTF-8, not a JSON object, or
// followed by anything but whitespace; duplicate tensor names, duplicate keys
// inside a tensor entry or inside __metadata__; unknown dtypes or keys;
// offsets that overlap, leave gaps, run backwards or past the data region;
// a byte count that does not equal the shape's element count times the dtype
// size; data that does not end exactly at the end of the file. Every such
// error wraps [ErrFormat] and names the file (and the tensor, where there is
// one). An empty file with zero tensors ("{}") is valid.
//
// # Ownership
//
// A [File] owns its mapping. Slices returned by [File.Data] point into it:
// they are read-only (writing to them crashes the program with a
// segmentation fault, which recover cannot catch) and valid until
// [File.Close]. The file must not be truncated or rewritten while it is
// open: the kernel would deliver SIGBUS on access. All methods except Close
// are safe for concurrent use.
//
// # Writing
//
// [EncodeHeader] and [WriteHeader] build the header of a new file; the
// caller then writes the tensors' bytes in the same order.
package stfile
