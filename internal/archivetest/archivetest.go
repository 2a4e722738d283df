// Package archivetest crafts malformed archives for tests: it changes one
// field of an archive's manifest, re-signs the manifest checksum so that
// the change reaches the reader's validation and the decoders behind it,
// and generates, from a valid archive, mutations the format says a reader
// must refuse (docs/FORMAT.md section 4). It is imported by tests only.
package archivetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// Manifest returns the manifest JSON of the archive bytes raw.
func Manifest(raw []byte) (string, error) {
	f, err := stfile.Parse("archive", raw)
	if err != nil {
		return "", err
	}
	return f.Metadata()[archive.MetadataKey], nil
}

// Resign returns raw with its manifest replaced by js and the manifest
// checksum recomputed; the blobs are unchanged.
func Resign(raw []byte, js string) ([]byte, error) {
	return EditMetadata(raw, func(md map[string]string) {
		md[archive.MetadataKey] = js
		md[archive.MetadataCRCKey] = archive.ManifestCRC(js)
	})
}

// EditMetadata returns raw with its header's __metadata__ changed by edit;
// the blobs are unchanged.
func EditMetadata(raw []byte, edit func(md map[string]string)) ([]byte, error) {
	f, err := stfile.Parse("archive", raw)
	if err != nil {
		return nil, err
	}
	md := f.Metadata()
	edit(md)
	var infos []stfile.Info
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		infos = append(infos, info)
	}
	h, err := stfile.EncodeHeader(infos, md)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := stfile.WriteHeader(&out, h); err != nil {
		return nil, err
	}
	out.Write(raw[f.DataOffset():])
	return out.Bytes(), nil
}

// Mutation replaces the value at Path in a manifest with Value.
type Mutation struct {
	// Path is a JSON Pointer (RFC 6901): object keys and array indices,
	// each after a "/" ("/tensors/3/lowrank/bands/0/count"). A key that
	// meets a string holding JSON (a shard header) descends into that JSON.
	Path string
	// Value is the new value: any JSON-encodable Go value; Delete removes
	// the key instead.
	Value any
	// Refingerprint recomputes the base fingerprint after the change, so
	// that a change to a base record is judged on its own.
	Refingerprint bool
}

// Delete is the Mutation.Value that removes a key.
var Delete = deleteMarker{}

type deleteMarker struct{}

func (m Mutation) String() string {
	v, _ := json.Marshal(m.Value)
	if m.Value == Delete {
		v = []byte("(deleted)")
	}
	// Long values (a whole tensor list) are cut: the string names a test.
	const maxValue = 48
	if len(v) > maxValue {
		v = append(v[:maxValue:maxValue], "..."...)
	}
	s := fmt.Sprintf("%s=%s", m.Path, v)
	if m.Refingerprint {
		s += " (refingerprinted)"
	}
	return s
}

// decode parses JSON keeping numbers exact.
func decode(js string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// Apply returns the manifest js with m applied.
func Apply(js string, m Mutation) (string, error) {
	v, err := decode(js)
	if err != nil {
		return "", err
	}
	v, err = setPath(v, splitPath(m.Path), m.Value)
	if err != nil {
		return "", fmt.Errorf("%s: %w", m.Path, err)
	}
	if m.Refingerprint {
		if err := refingerprint(v); err != nil {
			return "", err
		}
	}
	out, err := json.Marshal(v)
	return string(out), err
}

// setPath returns v with the value at keys replaced.
func setPath(v any, keys []string, value any) (any, error) {
	if len(keys) == 0 {
		return value, nil
	}
	k := keys[0]
	switch c := v.(type) {
	case map[string]any:
		if len(keys) == 1 && value == Delete {
			delete(c, k)
			return c, nil
		}
		next, err := setPath(c[k], keys[1:], value)
		c[k] = next
		return c, err
	case []any:
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= len(c) {
			return c, fmt.Errorf("no element %q", k)
		}
		c[i], err = setPath(c[i], keys[1:], value)
		return c, err
	case string:
		inner, err := decode(c)
		if err != nil {
			return c, fmt.Errorf("string is not JSON: %w", err)
		}
		inner, err = setPath(inner, keys, value)
		if err != nil {
			return c, err
		}
		b, err := json.Marshal(inner)
		return string(b), err
	}
	return v, fmt.Errorf("no container at %q", k)
}

// refingerprint recomputes base.fingerprint of the decoded manifest v.
func refingerprint(v any) error {
	m, _ := v.(map[string]any)
	base, _ := m["base"].(map[string]any)
	if base == nil {
		return fmt.Errorf("no base")
	}
	raw, err := json.Marshal(base["tensors"])
	if err != nil {
		return err
	}
	var ts []archive.BaseTensor
	if err := json.Unmarshal(raw, &ts); err != nil {
		return nil // the change itself is malformed: leave the fingerprint
	}
	base["fingerprint"] = archive.Fingerprint(ts)
	return nil
}

// Paths lists the path of every value in the manifest js, containers
// included, descending into the JSON of shard headers, in document order
// (object keys sorted).
func Paths(js string) ([]string, error) {
	v, err := decode(js)
	if err != nil {
		return nil, err
	}
	var out []string
	walk(v, "", func(path string, _ any) { out = append(out, path) })
	return out, nil
}

// escape and unescape convert a key to and from its JSON Pointer form.
var (
	escape   = strings.NewReplacer("~", "~0", "/", "~1")
	unescape = strings.NewReplacer("~1", "/", "~0", "~")
)

// splitPath returns the keys of a JSON Pointer.
func splitPath(p string) []string {
	keys := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, k := range keys {
		keys[i] = unescape.Replace(k)
	}
	return keys
}

// walk calls fn for every value under v, v excluded, with its JSON
// Pointer below path.
func walk(v any, path string, fn func(path string, v any)) {
	join := func(k string) string {
		return path + "/" + escape.Replace(k)
	}
	visit := func(p string, v any) {
		fn(p, v)
		walk(v, p, fn)
	}
	switch c := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(c))
		for k := range c {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			visit(join(k), c[k])
		}
	case []any:
		for i, e := range c {
			visit(join(strconv.Itoa(i)), e)
		}
	case string:
		if strings.HasSuffix(path, "/header") {
			if inner, err := decode(c); err == nil {
				walk(inner, path, fn)
			}
		}
	}
}
