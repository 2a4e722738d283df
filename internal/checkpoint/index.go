package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxIndexSize caps the bytes read from an index file. Real indexes hold
// one short line per tensor: about 100 KB for a 70B model, a few MB for the
// largest published ones.
const maxIndexSize = 64 << 20

// index is a parsed model.safetensors.index.json.
type index struct {
	metadata map[string][]byte // raw JSON values of "metadata"
	entries  []indexEntry      // weight_map, in file order
}

type indexEntry struct {
	tensor, shard string
}

// readIndex reads and parses the index at path. A missing file gives an
// error wrapping fs.ErrNotExist; a malformed one wraps ErrFormat.
func readIndex(path string) (*index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// Read-only: a Close error cannot lose data.
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxIndexSize {
		return nil, formatError(path, "malformed index", "larger than %d bytes", maxIndexSize)
	}
	idx, err := parseIndex(b)
	if err != nil {
		return nil, formatError(path, "malformed index", "%v", err)
	}
	return idx, nil
}

// parseIndex walks the JSON token by token so that duplicate keys in
// weight_map, which encoding/json would silently merge, are caught.
func parseIndex(b []byte) (*index, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := expectDelim(dec, '{'); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	idx := &index{}
	seen := make(map[string]bool)
	for dec.More() {
		key, err := readString(dec)
		if err != nil {
			return nil, err
		}
		if seen[key] {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "metadata":
			var raw map[string]json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("metadata: %w", err)
			}
			if raw != nil {
				idx.metadata = make(map[string][]byte, len(raw))
				for k, v := range raw {
					idx.metadata[k] = v
				}
			}
		case "weight_map":
			if idx.entries, err = readWeightMap(dec); err != nil {
				return nil, fmt.Errorf("weight_map: %w", err)
			}
		default:
			// Unknown keys are tolerated, as transformers does.
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fmt.Errorf("%q: %w", key, err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the JSON object")
	}
	if !seen["weight_map"] {
		return nil, errors.New(`no "weight_map"`)
	}
	return idx, nil
}

func readWeightMap(dec *json.Decoder) ([]indexEntry, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	var entries []indexEntry
	seen := make(map[string]bool)
	for dec.More() {
		tensor, err := readString(dec)
		if err != nil {
			return nil, err
		}
		if seen[tensor] {
			return nil, fmt.Errorf("tensor %q listed twice", tensor)
		}
		seen[tensor] = true
		shard, err := readString(dec)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", tensor, err)
		}
		if !isPlainName(shard) {
			return nil, fmt.Errorf("tensor %q: shard %q is not a file name in the checkpoint folder", tensor, shard)
		}
		entries = append(entries, indexEntry{tensor: tensor, shard: shard})
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return entries, nil
}

// isPlainName reports whether name names a file directly inside a folder,
// so that a hostile index cannot reach outside it.
func isPlainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\\\x00")
}

func readString(dec *json.Decoder) (string, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("want a string, got %v", tok)
	}
	return s, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := nextToken(dec)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want '%v', got %v", want, tok)
	}
	return nil
}

// nextToken is dec.Token with the end of input inside a value reported as
// io.ErrUnexpectedEOF.
func nextToken(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return tok, err
}
