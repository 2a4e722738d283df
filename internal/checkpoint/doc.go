// Package checkpoint opens a model checkpoint for reading: a single
// .safetensors file, or a Hugging Face folder holding model.safetensors or
// shards listed by model.safetensors.index.json. It owns shard discovery,
// the index's consistency with the shards, tensor lookup across shards and
// the listing of a folder's other files: the side files carried along
// (config, tokenizer, model card, licence, ...) and those skipped, with the
// reason.
//
// Every shard is opened with pkg/stfile, so tensor bytes are slices of
// read-only memory maps, valid until Checkpoint.Close. Errors name the file
// at fault and wrap ErrFormat (bad file or index), ErrMissingShard,
// ErrNoCheckpoint or ErrNotFound.
//
// WriteShardedCopy splits a checkpoint into index-described shards; tests
// across the project use it to exercise sharded input.
package checkpoint
