package alloc

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSchedule(t *testing.T) {
	tests := []struct {
		in      string
		want    Schedule
		str     string // canonical String(); "" means in
		wantErr bool
	}{
		{in: "auto", want: Schedule{}},
		{in: "auto:8,4,3,2", want: Schedule{kind: kindAuto, widths: []int{8, 4, 3, 2}}},
		{in: "auto:8,4,3,2,1", want: Schedule{}, str: "auto"},
		{in: " auto : 8, 3 ", want: Schedule{kind: kindAuto, widths: []int{8, 3}}, str: "auto:8,3"},
		{in: "greedy", want: Schedule{kind: kindGreedy}},
		{in: "greedy:4,2", want: Schedule{kind: kindGreedy, widths: []int{4, 2}}},
		{in: "paper", want: Schedule{kind: kindPaper}},
		{in: "8:2,3:32,2:rest", want: Schedule{kind: kindList, bands: []band{{8, 2}, {3, 32}, {2, rest}}}},
		{in: "4:100", want: Schedule{kind: kindList, bands: []band{{4, 100}}}},
		{in: "2:rest", want: Schedule{kind: kindList, bands: []band{{2, rest}}}},
		{in: "8:1, 1:rest", want: Schedule{kind: kindList, bands: []band{{8, 1}, {1, rest}}}, str: "8:1,1:rest"},

		{in: "", wantErr: true},
		{in: "   ", wantErr: true},
		{in: "abc", wantErr: true},
		{in: "8", wantErr: true},
		{in: "8:2,3", wantErr: true},
		{in: "3:2,8:4", wantErr: true},
		{in: "3:2,3:4", wantErr: true},
		{in: "9:1", wantErr: true},
		{in: "0:4", wantErr: true},
		{in: "2:rest,3:4", wantErr: true},
		{in: "3:rest,2:rest", wantErr: true},
		{in: "8:0", wantErr: true},
		{in: "8:-1", wantErr: true},
		{in: "8:+1", wantErr: true},
		{in: "8:1.5", wantErr: true},
		{in: "8:99999999999999999999", wantErr: true},
		{in: "8:2,", wantErr: true},
		{in: ",8:2", wantErr: true},
		{in: "8:2,,3:1", wantErr: true},
		{in: "x:2", wantErr: true},
		{in: "paper:8", wantErr: true},
		{in: "auto:", wantErr: true},
		{in: "auto:2,4", wantErr: true},
		{in: "auto:8,0", wantErr: true},
		{in: "auto:9", wantErr: true},
		{in: "greedy:x", wantErr: true},
		{in: "Auto", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSchedule(tc.in)
			if tc.wantErr {
				require.ErrorIs(t, err, ErrBadSchedule)
				assert.Contains(t, err.Error(), "bad schedule")
				t.Log(err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			str := tc.str
			if str == "" {
				str = tc.in
			}
			assert.Equal(t, str, got.String())
			again, err := ParseSchedule(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, again, "String must round-trip")
		})
	}
}

func TestScheduleZeroValueIsAuto(t *testing.T) {
	var s Schedule
	assert.Equal(t, "auto", s.String())
}

func TestScheduleText(t *testing.T) {
	type config struct {
		Schedule Schedule `json:"schedule"`
	}
	var c config
	require.NoError(t, json.Unmarshal([]byte(`{"schedule":"8:2,3:32,2:rest"}`), &c))
	assert.Equal(t, "8:2,3:32,2:rest", c.Schedule.String())
	out, err := json.Marshal(c)
	require.NoError(t, err)
	assert.JSONEq(t, `{"schedule":"8:2,3:32,2:rest"}`, string(out))

	before := c.Schedule
	err = c.Schedule.UnmarshalText([]byte("3:2,8:4"))
	require.ErrorIs(t, err, ErrBadSchedule)
	assert.Equal(t, before, c.Schedule, "a failed UnmarshalText leaves the value unchanged")
}
