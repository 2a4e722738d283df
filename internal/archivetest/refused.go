package archivetest

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/deltacome/deltacome/pkg/archive"
)

// Refused returns mutations of the manifest js that a reader must refuse
// while validating the manifest, before reading any blob: for each field
// of each record kind js holds (settings, base, layout, shard headers, side
// files, every storage kind, every blob role), values that contradict the
// format or the rest of the archive. A field met in several records of the
// same kind (and blob role) is changed in the first only.
func Refused(js string) ([]Mutation, error) {
	root, err := decode(js)
	if err != nil {
		return nil, err
	}
	g := &generator{root: root, seen: map[string]bool{}, values: map[string]any{}}
	walk(root, "", func(path string, v any) { g.values[path] = v })
	walk(root, "", g.field)
	g.structural()
	return g.out, nil
}

type generator struct {
	root   any
	values map[string]any // every value of root by path
	out    []Mutation
	seen   map[string]bool // field keys already mutated
}

// add records mutations of path to each value, once per field key.
func (g *generator) add(key, path string, refingerprint bool, values ...any) {
	if g.seen[key] {
		return
	}
	g.seen[key] = true
	for _, v := range values {
		g.out = append(g.out, Mutation{Path: path, Value: v, Refingerprint: refingerprint})
	}
}

// get returns the value at path, or nil.
func (g *generator) get(path string) any { return g.values[path] }

// key names the field at path for deduplication: indices dropped, tensor
// fields qualified by the tensor's kind, blob fields by the blob's role,
// shard header entries by their field alone.
func (g *generator) key(path string) string {
	parts := splitPath(path)
	var out []string
	for i, p := range parts {
		if _, err := strconv.Atoi(p); err == nil {
			prefix := "/" + strings.Join(parts[:i+1], "/")
			switch {
			case len(out) == 1 && out[0] == "tensors":
				kind, _ := g.get(prefix + "/kind").(string)
				out[0] += "[" + kind + "]"
			case len(out) > 0 && out[len(out)-1] == "blobs":
				role, _ := g.get(prefix + "/role").(string)
				out[len(out)-1] += "[" + role + "]"
			}
			continue
		}
		if i > 0 && parts[i-1] == "header" {
			p = "*"
		}
		out = append(out, p)
	}
	return strings.Join(out, ".")
}

// blobPath matches the fields of a blob record.
var blobPath = regexp.MustCompile(`/blobs/\d+/[^/]+$|/blob/[^/]+$`)

func num(v any) int64 {
	n, _ := v.(json.Number)
	i, _ := n.Int64()
	return i
}

// big is a count or size that no archive holds, whose multiples wrap
// 64-bit sums (four of them sum to 2^64).
const big = int64(1) << 62

func (g *generator) field(path string, v any) {
	key := g.key(path)
	last := path[strings.LastIndex(path, "/")+1:]
	switch {
	case strings.Contains(path, "/header/"):
		g.headerField(key, path, last)
	case blobPath.MatchString(path):
		g.blobField(key, path, last, v)
	case strings.HasPrefix(path, "/tensors/"):
		g.tensorField(key, path, last, v)
	case strings.HasPrefix(path, "/base/tensors/"):
		switch last {
		case "name":
			g.add(key, path, false, "")
		case "dtype":
			g.add(key, path, false, "Q4")
			g.add(key+"+", path, true, "Q4", "bf16")
		case "shape":
			g.add(key+"+", path, true, []any{big, big})
		case "sha256":
			g.add(key+"+", path, true, "zz", strings.Repeat("A", 64))
		}
	case strings.HasPrefix(path, "/side_files/"):
		switch last {
		case "name":
			g.add(key, path, false, "", ".", "..", "a/b", `a\b`, g.get("/layout/shards/0/file"))
		case "size":
			g.add(key, path, false, int64(-1), num(v)+1, big)
		case "sha256":
			g.add(key, path, false, "zz")
		}
	default:
		g.topField(key, path, v)
	}
}

func (g *generator) topField(key, path string, v any) {
	values := map[string][]any{
		"format":              {"deltacomf", ""},
		"version":             {0, archive.Version + 1},
		"settings.mode":       {"lossy"},
		"settings.method":     {"svd"},
		"settings.ratio":      {-1},
		"settings.group_size": {-1},
		"settings.grid":       {"nf4"},
		"base.fingerprint":    {"sha256:00", ""},
		"layout.shards.file":  {"", "..", "a/b", `a\b`},
		"layout.shards.header": {"not json", "{}",
			`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`},
	}
	if vs, ok := values[key]; ok {
		if key == "layout.shards.file" {
			if s := g.get("/side_files/0/name"); s != nil {
				vs = append(vs, s)
			}
		}
		g.add(key, path, false, vs...)
	}
	if key == "side_files" {
		if list, _ := v.([]any); len(list) > 0 {
			g.add(key, path, false, []any{})
		}
	}
	if key == "tensors" {
		list, _ := v.([]any)
		g.add(key, path, false, []any{}, append(slices.Clone(list), list[0]))
	}
}

func (g *generator) headerField(key, path, last string) {
	values := map[string][]any{
		"dtype":        {"Q4", "I8"},
		"shape":        {[]any{1}},
		"data_offsets": {[]any{0, 1}},
	}
	if vs, ok := values[last]; ok {
		g.add(key, path, false, vs...)
	}
}

func (g *generator) blobField(key, path, last string, v any) {
	switch last {
	case "role":
		g.add(key, path, false, "nope")
		// Every blob may carry a shuffle; add one where it is absent.
		if shuffle := strings.TrimSuffix(path, "role") + "shuffle"; g.get(shuffle) == nil {
			g.add(strings.TrimSuffix(key, "role")+"shuffle", shuffle, false, int64(-1), 9, int64(1)<<36)
		}
	case "tensor":
		vs := []any{"nope"}
		if other := g.otherBlob(v); other != "" {
			vs = append(vs, other)
		}
		g.add(key, path, false, vs...)
	case "codec":
		g.add(key, path, false, "lz4", "")
	case "raw_size":
		g.add(key, path, false, int64(-1), num(v)+1, big)
	case "size":
		g.add(key, path, false, int64(-1), num(v)+1)
	case "crc32c":
		g.add(key, path, false, int64(-1), int64(1)<<32)
	case "shuffle":
		g.add(key, path, false, int64(-1), 9, int64(1)<<36)
	}
}

// otherBlob returns the name of a blob other than name, "" if none.
func (g *generator) otherBlob(name any) string {
	var other string
	walk(g.root, "", func(p string, v any) {
		if s, ok := v.(string); ok && other == "" && s != name && blobPath.MatchString(p) && strings.HasSuffix(p, "/tensor") {
			other = s
		}
	})
	return other
}

func (g *generator) tensorField(key, path, last string, v any) {
	tensor := path[:len("/tensors/")+strings.Index(path[len("/tensors/"):], "/")]
	kind, _ := g.get(tensor + "/kind").(string)
	switch last {
	case "name":
		vs := []any{"", "nope"}
		if other := g.get("/tensors/0/name"); other != v {
			vs = append(vs, other)
		} else if other := g.get("/tensors/1/name"); other != nil {
			vs = append(vs, other)
		}
		g.add(key, path, false, vs...)
	case "dtype":
		g.add(key, path, false, "Q4", "bf16", "I8")
	case "shape":
		shape, _ := v.([]any)
		longer := append(slices.Clone(shape), 2)
		g.add(key, path, false, []any{big, big}, longer, []any{-1})
	case "shard":
		g.add(key, path, false, int64(-1), int64(1), int64(1)<<40)
	case "kind":
		vs := []any{"zip"}
		for _, k := range archive.Kinds() {
			if k != kind {
				vs = append(vs, k)
			}
		}
		g.add(key, path, false, vs...)
		// A record of another kind, or none.
		for _, rec := range []string{"lowrank", "bitdelta", "lowrank_bf16", "lowrank_sym"} {
			recPath := tensor + "/" + rec
			if g.get(recPath) == nil {
				g.add(strings.TrimSuffix(key, "kind")+"+"+rec, recPath, false, map[string]any{})
			} else {
				g.add(strings.TrimSuffix(key, "kind")+"-"+rec, recPath, false, nil)
			}
		}
		if g.get(tensor+"/blobs") == nil {
			g.add(strings.TrimSuffix(key, "kind")+"blobs", tensor+"/blobs", false, []any{map[string]any{"role": "xor"}})
		}
	case "sha256":
		g.add(key, path, false, "zz", "", strings.Repeat("A", 64))
	case "bytes":
		g.add(key, path, false, int64(-1), num(v)+1, big)
	case "blobs":
		list, _ := v.([]any)
		g.add(key, path, false, []any{}, append(slices.Clone(list), list[0]))
	case "rank":
		g.add(key, path, false, int64(-1), num(v)+1, big)
		for _, rec := range []string{"lowrank", "lowrank_sym"} {
			if strings.Contains(path, "/"+rec+"/") {
				g.bands(key, tensor+"/"+rec, num(v))
			}
		}
	case "bits":
		g.add(key, path, false, 0, 9)
	case "count":
		g.add(key, path, false, 0, int64(-1), num(v)+1, big)
	case "group_size":
		if strings.Contains(path, "/lowrank_sym/") { // 0: one group per vector
			g.add(key, path, false, int64(-1))
		} else {
			g.add(key, path, false, 0, int64(-1))
		}
	case "refit":
		g.add(key, path, false, int64(-1))
	case "refit_round":
		g.add(key, path, false, int64(-1), big)
	case "rel_error", "delta_norm", "energy_kept", "budget":
		g.add(key, path, false, -1)
	}
}

// bands adds band lists that contradict a Delta-CoMe record (path rec, as
// tensor/lowrank) of rank r: counts that wrap 64-bit sums to r, widths that
// increase, none at all.
func (g *generator) bands(key, rec string, r int64) {
	band := func(bits, count int64) map[string]any { return map[string]any{"bits": bits, "count": count} }
	wrap := []any{band(2, big), band(2, big), band(2, big), band(2, big+r)}
	vs := []any{wrap, []any{band(2, r+1)}}
	if r > 0 {
		vs = append(vs, []any{})
	}
	if r >= 2 {
		vs = append(vs, []any{band(2, 1), band(3, r-1)})
	}
	g.add(strings.TrimSuffix(key, "rank")+"bands", rec+"/bands", false, vs...)
}

// structural adds mutations of optional fields that js may lack.
func (g *generator) structural() {
	if g.get("/layout/index") == nil {
		vs := []any{"a/b", ".."}
		if s := g.get("/layout/shards/0/file"); s != nil {
			vs = append(vs, s)
		}
		g.add("layout.index", "/layout/index", false, vs...)
	}
}
