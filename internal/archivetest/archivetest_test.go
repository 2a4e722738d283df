package archivetest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestApply(t *testing.T) {
	js := `{"a":{"b/c":[1,2],"d~e":"x"},"layout":{"shards":[{"header":"{\"w.0\":{\"dtype\":\"F32\"}}"}]},"n":18446744073709551615}`
	cases := []struct {
		name string
		m    Mutation
		want string
	}{
		{"escaped slash", Mutation{Path: "/a/b~1c/1", Value: 5},
			`{"a":{"b/c":[1,5],"d~e":"x"},"layout":{"shards":[{"header":"{\"w.0\":{\"dtype\":\"F32\"}}"}]},"n":18446744073709551615}`},
		{"escaped tilde", Mutation{Path: "/a/d~0e", Value: Delete},
			`{"a":{"b/c":[1,2]},"layout":{"shards":[{"header":"{\"w.0\":{\"dtype\":\"F32\"}}"}]},"n":18446744073709551615}`},
		{"into a header", Mutation{Path: "/layout/shards/0/header/w.0/dtype", Value: "Q4"},
			`{"a":{"b/c":[1,2],"d~e":"x"},"layout":{"shards":[{"header":"{\"w.0\":{\"dtype\":\"Q4\"}}"}]},"n":18446744073709551615}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Apply(js, tc.m)
			require.NoError(t, err)
			assert.JSONEq(t, tc.want, got)
		})
	}
	_, err := Apply(js, Mutation{Path: "/a/b~1c/7", Value: 1})
	assert.Error(t, err, "index out of range")
}

func TestPaths(t *testing.T) {
	paths, err := Paths(`{"a":[{"b":1}],"s":{"header":"{\"w\":{\"shape\":[2]}}"}}`)
	require.NoError(t, err)
	assert.Equal(t, []string{"/a", "/a/0", "/a/0/b", "/s", "/s/header", "/s/header/w", "/s/header/w/shape", "/s/header/w/shape/0"}, paths)
}
