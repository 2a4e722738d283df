package alloc

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrBadSchedule is wrapped by the errors ParseSchedule returns for text that
// is not a schedule; the wrapping error says what is wrong and where.
var ErrBadSchedule = errors.New("bad schedule")

// kind says which rule a Schedule applies.
type kind uint8

const (
	kindAuto   kind = iota // rate-distortion optimum, the zero value
	kindGreedy             // greedy rate-distortion, the baseline auto improves on
	kindPaper              // 8:2,3:32,2:rest, the paper's schedule
	kindList               // explicit bands
)

// rest is the Band.count of a band that runs as far as the budget allows.
const rest = -1

// maxCount caps the count of one band in schedule text, far above any rank,
// so that parsing cannot overflow.
const maxCount = 1 << 30

// defaultWidths are the nonzero code widths auto and greedy choose from when
// the schedule names none (0, dropping a pair, is always allowed). 1-bit codes
// are included because they cost nothing to consider: the optimiser drops a
// width whose measured error does not pay for its bytes.
var defaultWidths = []int{8, 4, 3, 2, 1}

// band is one entry of an explicit schedule: count pairs at bits bits.
type band struct {
	bits  int
	count int // positive, or rest
}

// Schedule is a rule that turns a Problem into a Plan. It is a value parsed
// from text (ParseSchedule) and printed back by String; the zero value is
// "auto". Schedules are immutable and safe for concurrent use.
//
// The accepted texts are:
//
//	auto            rate-distortion optimum over widths {8,4,3,2,1} (and 0)
//	auto:8,4,3,2    the same over the listed widths (strictly decreasing, 1..8)
//	greedy          greedy rate-distortion (by error drop per byte), the
//	greedy:8,4,3,2  baseline auto improves on
//	paper           the paper's schedule, 8:2,3:32,2:rest (see Plan)
//	8:2,3:32,2:rest explicit bands WIDTH:COUNT in order, widths strictly
//	                decreasing in 1..8, counts positive; the last may be
//	                WIDTH:rest
type Schedule struct {
	kind   kind
	widths []int  // auto, greedy: nonzero widths, strictly decreasing; nil = defaultWidths
	bands  []band // list
}

// ParseSchedule parses a schedule from its text form (see Schedule). Spaces
// around tokens are ignored. Errors wrap ErrBadSchedule.
func ParseSchedule(text string) (Schedule, error) {
	s := strings.TrimSpace(text)
	bad := func(format string, args ...any) (Schedule, error) {
		return Schedule{}, fmt.Errorf("%w %q: %s", ErrBadSchedule, text, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return bad("empty; want auto, greedy, paper or bands like 8:2,3:32,2:rest")
	}
	name, arg, hasArg := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	switch name {
	case "paper":
		if hasArg {
			return bad("paper takes no arguments")
		}
		return Schedule{kind: kindPaper}, nil
	case "auto", "greedy":
		k := kindAuto
		if name == "greedy" {
			k = kindGreedy
		}
		if !hasArg {
			return Schedule{kind: k}, nil
		}
		widths, err := parseWidths(arg)
		if err != nil {
			return bad("%s widths: %v", name, err)
		}
		if slices.Equal(widths, defaultWidths) {
			widths = nil
		}
		return Schedule{kind: k, widths: widths}, nil
	}
	if !hasArg && strings.Trim(name, "0123456789") == "" {
		return bad("band 1 %q is not WIDTH:COUNT", name)
	}
	if !hasArg {
		return bad("unknown schedule %q; want auto, greedy, paper or bands like 8:2,3:32,2:rest", name)
	}
	fields := strings.Split(s, ",")
	bands := make([]band, 0, len(fields))
	for i, f := range fields {
		w, c, ok := strings.Cut(f, ":")
		if !ok {
			return bad("band %d %q is not WIDTH:COUNT", i+1, strings.TrimSpace(f))
		}
		bits, err := parseWidth(w)
		if err != nil {
			return bad("band %d %q: %v", i+1, strings.TrimSpace(f), err)
		}
		if i > 0 && bits >= bands[i-1].bits {
			return bad("band %d %q: width %d is not below the previous band's %d (widths must strictly decrease)",
				i+1, strings.TrimSpace(f), bits, bands[i-1].bits)
		}
		c = strings.TrimSpace(c)
		count := rest
		if c == "rest" {
			if i != len(fields)-1 {
				return bad("band %d %q: only the last band may be WIDTH:rest", i+1, strings.TrimSpace(f))
			}
		} else if count, err = parseCount(c); err != nil {
			return bad("band %d %q: %v", i+1, strings.TrimSpace(f), err)
		}
		bands = append(bands, band{bits: bits, count: count})
	}
	return Schedule{kind: kindList, bands: bands}, nil
}

// parseWidths parses a comma-separated, strictly decreasing list of widths.
func parseWidths(s string) ([]int, error) {
	var widths []int
	for i, f := range strings.Split(s, ",") {
		w, err := parseWidth(f)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		if i > 0 && w >= widths[i-1] {
			return nil, fmt.Errorf("entry %d: width %d is not below %d (widths must strictly decrease)", i+1, w, widths[i-1])
		}
		widths = append(widths, w)
	}
	return widths, nil
}

// parseWidth parses one code width in [1, MaxBits].
func parseWidth(s string) (int, error) {
	s = strings.TrimSpace(s)
	w, err := parseCount(s)
	if err != nil || w > MaxBits {
		if s == "0" {
			return 0, errors.New("width 0 is not a band: dropping is implied after the last band")
		}
		return 0, fmt.Errorf("width %q is not an integer in 1..%d", s, MaxBits)
	}
	return w, nil
}

// parseCount parses a positive decimal integer of at most maxCount, digits
// only (no sign).
func parseCount(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("count %q is not a positive integer or rest", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxCount {
		return 0, fmt.Errorf("count %q is larger than %d", s, maxCount)
	}
	if n == 0 {
		return 0, errors.New("count must be positive")
	}
	return n, nil
}

// String returns the canonical text of s, which ParseSchedule maps back to an
// equal schedule.
func (s Schedule) String() string {
	switch s.kind {
	case kindAuto, kindGreedy:
		name := "auto"
		if s.kind == kindGreedy {
			name = "greedy"
		}
		if s.widths == nil {
			return name
		}
		return name + ":" + joinInts(s.widths)
	case kindPaper:
		return "paper"
	case kindList:
		parts := make([]string, len(s.bands))
		for i, b := range s.bands {
			c := "rest"
			if b.count != rest {
				c = strconv.Itoa(b.count)
			}
			parts[i] = strconv.Itoa(b.bits) + ":" + c
		}
		return strings.Join(parts, ",")
	}
	panic(fmt.Sprintf("alloc: unknown schedule kind %d", s.kind))
}

// MarshalText implements encoding.TextMarshaler with the text of String.
func (s Schedule) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseSchedule; on
// error s is left unchanged and the error wraps ErrBadSchedule.
func (s *Schedule) UnmarshalText(text []byte) error {
	parsed, err := ParseSchedule(string(text))
	if err != nil {
		return err
	}
	*s = parsed
	return nil
}

// widthSet returns the nonzero widths an auto or greedy schedule chooses from.
func (s Schedule) widthSet() []int {
	if s.widths == nil {
		return defaultWidths
	}
	return s.widths
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, ",")
}
