package cli

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/linalg"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/golden from the current output")

var goldenDir = filepath.Join("..", "..", "testdata", "golden")

// headerBytes matches the header's byte count in inspect's text and JSON
// output, up to the number.
var headerBytes = regexp.MustCompile(`(header and manifest: |"header_bytes": )[0-9.]+( [KMG]iB| B)?`)

// fileRatio matches the ratio of inspect's text output that counts the
// whole file, manifest included, up to the number.
var fileRatio = regexp.MustCompile(`(of tensors: ratio )[0-9.]+`)

// goldenFloatTol is the relative tolerance on the non-integer numbers of a
// golden JSON file: errors and ratios come out of float32 SVD arithmetic,
// whose last bits may differ between CPU architectures; integers (bytes,
// ranks, counts) are compared exactly.
const goldenFloatTol = 1e-4

// TestArchiveReports compresses the tiny pair once and checks what is
// reported about the archive: inspect's text and JSON against goldens, the
// plot as an image, verify's verdicts and exit codes.
func TestArchiveReports(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "math.dcm")
	_, stderr, code := execute(t, "compress", "-q", "--workers", "2", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	st, err := os.Stat(arch)
	require.NoError(t, err)
	nBytes, human := strconv.FormatInt(st.Size(), 10), size(st.Size())
	// Goldens hold no temporary paths: the folder is replaced by TMP. Nor
	// do they hold the byte counts that include the manifest: its floats
	// are written in their shortest form, whose length follows their last
	// bits (BLAS backend, CPU). The file size is checked where it appears,
	// then masked with the header's length and the file's ratio.
	clean := func(s string) string {
		s = strings.ReplaceAll(s, dir, "TMP")
		s = strings.ReplaceAll(s, " ("+linalg.Kernel()+")", "") // the machine's BLAS kernels
		s = strings.ReplaceAll(s, "("+human+")", "(SIZE)")
		s = strings.ReplaceAll(s, "archive file: "+human, "archive file: SIZE")
		s = strings.ReplaceAll(s, `"archive_bytes": `+nBytes, `"archive_bytes": 0`)
		s = headerBytes.ReplaceAllString(s, "${1}0")
		s = fileRatio.ReplaceAllString(s, "${1}R")
		return s
	}

	t.Run("inspect text golden", func(t *testing.T) {
		stdout, stderr, code := execute(t, "inspect", arch)
		require.Equal(t, ExitOK, code, stderr)
		got := clean(stdout)
		assert.Contains(t, got, "role  tensors")
		assert.Contains(t, got, "TMP/math.dcm (SIZE)", "archive size reported")
		checkGolden(t, "inspect.txt", got, func(want string) { assert.Equal(t, want, got) })
	})

	t.Run("inspect JSON golden", func(t *testing.T) {
		stdout, stderr, code := execute(t, "inspect", "--json", arch)
		require.Equal(t, ExitOK, code, stderr)
		var rep inspectJSON
		require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
		assert.Equal(t, st.Size(), rep.ArchiveBytes)
		got := clean(stdout)
		assert.Equal(t, inspectSchema, rep.Schema)
		for _, role := range []string{"q", "k", "v", "o", "gate", "up", "down"} {
			assert.Equal(t, 4, rep.ByRole[role].Tensors, "role %s: one per layer of the tiny model", role)
		}
		assert.Equal(t, len(rep.Tensors), rep.Totals.Tensors)
		checkGolden(t, "inspect.json", got, func(want string) { assertJSONClose(t, want, got) })
	})

	t.Run("gemm-rate floors", func(t *testing.T) {
		stdout, stderr, code := execute(t, "gemm-rate", "--n", "64", "--reps", "1", "--archive", arch)
		require.Equal(t, ExitOK, code, stderr)
		var got gemmRateJSON
		require.NoError(t, json.Unmarshal([]byte(stdout), &got))
		stdout, _, _ = execute(t, "inspect", "--json", arch)
		var rep inspectJSON
		require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
		var product float64
		for _, tj := range rep.Tensors {
			if tj.Kind == "lowrank-sym" {
				product += 2 * float64(tj.Shape[0]) * float64(tj.Shape[1]) * float64(*tj.Rank)
			}
		}
		assert.Positive(t, got.GFLOPS)
		assert.Equal(t, 28, got.LowRankTensors)
		assert.InDelta(t, product, got.ReconstructFLOPs, 1e-6*product, "2mnk over the kept ranks")
		assert.Greater(t, got.CompressFLOPs, 4*product, "at least the four passes")
		assert.Greater(t, got.SVDRankFLOPs, got.CompressFLOPs, "the 2-bit rank exceeds every kept rank here")
		assert.InDelta(t, got.SVDRankFLOPs/got.GFLOPS/1e9, got.SVDRankFloorS, 1e-9*got.SVDRankFloorS)
	})

	t.Run("plot PNG", func(t *testing.T) {
		out := filepath.Join(dir, "spectrum.png")
		_, stderr, code := execute(t, "inspect", "--plot", out, arch)
		require.Equal(t, ExitOK, code, stderr)
		f, err := os.Open(out)
		require.NoError(t, err)
		defer f.Close()
		img, err := png.Decode(f)
		require.NoError(t, err)
		assert.Positive(t, img.Bounds().Dx())
	})

	t.Run("plot SVG of a named tensor", func(t *testing.T) {
		out := filepath.Join(dir, "spectrum.svg")
		const name = "model.layers.2.self_attn.k_proj.weight"
		_, stderr, code := execute(t, "inspect", "--plot", out, "--tensor", name, arch)
		require.Equal(t, ExitOK, code, stderr)
		data, err := os.ReadFile(out)
		require.NoError(t, err)
		assertSVG(t, data, name)
	})

	t.Run("plot usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"--plot", filepath.Join(dir, "x.pdf")},
			{"--plot", filepath.Join(dir, "x.png"), "--tensor", "model.norm.weight"},
			{"--plot", filepath.Join(dir, "x.png"), "--tensor", "no.such.tensor"},
			{"--tensor", "model.layers.0.mlp.up_proj.weight"},
		} {
			_, _, code := execute(t, append([]string{"inspect"}, append(args, arch)...)...)
			assert.Equal(t, ExitUsage, code, "%v", args)
		}
		assert.NoFileExists(t, filepath.Join(dir, "x.png"))
	})

	t.Run("verify", func(t *testing.T) {
		corrupt := filepath.Join(dir, "corrupt.dcm")
		data, err := os.ReadFile(arch)
		require.NoError(t, err)
		data[len(data)-100] ^= 0x40 // a byte of the last blobs, past the header
		require.NoError(t, os.WriteFile(corrupt, data, 0o644))

		cases := []struct {
			name string
			args []string
			want int
		}{
			{"good archive", []string{tinyBase, tinyFT, arch}, ExitOK},
			{"within max error", []string{"--max-error", "0.5", tinyBase, tinyFT, arch}, ExitOK},
			{"tiny max error", []string{"--max-error", "1e-6", tinyBase, tinyFT, arch}, ExitVerify},
			{"corrupt archive", []string{tinyBase, tinyFT, corrupt}, ExitBadInput},
			{"another fine-tune", []string{tinyBase, tinyBase, arch}, ExitVerify},
			{"wrong base", []string{tinyFT, tinyFT, arch}, ExitBadInput},
			{"negative max error", []string{"--max-error", "-1", tinyBase, tinyFT, arch}, ExitUsage},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				_, stderr, code := execute(t, append([]string{"verify", "-q"}, tc.args...)...)
				assert.Equal(t, tc.want, code, stderr)
			})
		}
	})

	t.Run("verify report", func(t *testing.T) {
		stdout, stderr, code := execute(t, "verify", "--json", tinyBase, tinyFT, arch)
		require.Equal(t, ExitOK, code, stderr)
		var rep verifyJSON
		require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
		assert.True(t, rep.OK)
		assert.Equal(t, 28, rep.Lossy)
		assert.Equal(t, 11, rep.Exact)
		assert.Empty(t, rep.Problems)
		assert.Equal(t, 1, rep.SideFiles)
		// The reconstruction is rounded to bf16, so its error against FT
		// sits near, not at, the error recorded for the delta alone.
		insp, _, _ := execute(t, "inspect", "--json", arch)
		var ir inspectJSON
		require.NoError(t, json.Unmarshal([]byte(insp), &ir))
		require.NotNil(t, ir.Totals.RelError)
		assert.InDelta(t, *ir.Totals.RelError, rep.RelError, 0.01)
		for _, tc := range rep.Tensors {
			if !tc.Exact {
				require.NotNil(t, tc.RelError, tc.Name)
				assert.InDelta(t, tc.RecordedError, *tc.RelError, 0.02, tc.Name)
			}
		}
	})
}

// checkGolden compares got with testdata/golden/name through compare, or
// rewrites the file under -update.
func checkGolden(t *testing.T, name, got string, compare func(want string)) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *updateGolden {
		require.NoError(t, os.MkdirAll(goldenDir, 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file: run go test ./internal/cli -update")
	compare(string(want))
}

// assertJSONClose compares two JSON documents: same structure and strings,
// integers equal, other numbers within goldenFloatTol.
func assertJSONClose(t *testing.T, want, got string) {
	t.Helper()
	decode := func(s string) any {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		var v any
		require.NoError(t, dec.Decode(&v))
		return v
	}
	var walk func(path string, w, g any)
	walk = func(path string, w, g any) {
		switch w := w.(type) {
		case map[string]any:
			gm, ok := g.(map[string]any)
			if !assert.True(t, ok, "%s: want an object", path) {
				return
			}
			assert.Len(t, gm, len(w), "%s: keys", path)
			for k, wv := range w {
				walk(path+"."+k, wv, gm[k])
			}
		case []any:
			ga, ok := g.([]any)
			if !assert.True(t, ok, "%s: want an array", path) || !assert.Len(t, ga, len(w), path) {
				return
			}
			for i := range w {
				walk(path+"["+strconv.Itoa(i)+"]", w[i], ga[i])
			}
		case json.Number:
			gn, ok := g.(json.Number)
			if !assert.True(t, ok, "%s: want a number", path) {
				return
			}
			if !strings.ContainsAny(w.String(), ".eE") {
				assert.Equal(t, w, gn, path)
				return
			}
			wf, _ := w.Float64()
			gf, _ := gn.Float64()
			assert.LessOrEqual(t, math.Abs(wf-gf), goldenFloatTol*math.Max(math.Abs(wf), 1e-12), "%s: %v vs %v", path, wf, gf)
		default:
			assert.Equal(t, w, g, path)
		}
	}
	walk("$", decode(want), decode(got))
}

// assertSVG checks that data is well-formed XML whose root is <svg> and
// whose text holds want.
func assertSVG(t *testing.T, data []byte, want string) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	var text bytes.Buffer
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
		}
	}
	assert.Equal(t, "svg", root)
	assert.Contains(t, text.String(), want)
}
