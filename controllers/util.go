package controllers

import (
	"bytes"
	"encoding/json"
)

// equalJSON compares two values as the API server would see them.
func equalJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
