// Package jsonhttp writes the JSON replies of the relay's HTTP endpoints.
package jsonhttp

import (
	"encoding/json"
	"net/http"
)

// Reply writes v as a JSON reply with status code. Replies are never cached: they
// describe the relay's state at the moment.
func Reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
