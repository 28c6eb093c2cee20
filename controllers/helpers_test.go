package controllers_test

import (
	"encoding/json"
	"fmt"
	"testing/fstest"
)

func toString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }

func mapFS(files map[string][]byte) fstest.MapFS {
	fs := fstest.MapFS{}
	for k, v := range files {
		fs[k] = &fstest.MapFile{Data: v}
	}
	return fs
}

func ptr[T any](v T) *T { return &v }
