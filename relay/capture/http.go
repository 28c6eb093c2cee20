package capture

import (
	"embed"
	"net/http"
	"strconv"

	"github.com/kuberelay/kuberelay/relay/internal/jsonhttp"
)

//go:embed ui
var ui embed.FS

// contentPolicy keeps a captured HTML body, shown in a sandboxed frame, from running
// scripts or loading anything from outside (tracking pixels included).
const contentPolicy = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Listing is GET /capture/api/messages.
type Listing struct {
	Stats
	// Pod is the host name of the relay that holds these messages: each relay pod
	// keeps what it captured.
	Pod   string     `json:"pod"`
	Items []*Message `json:"items"`
}

// Handler serves the store on the relay's HTTP port:
//
//	GET    /capture/                         the web UI
//	GET    /capture/api/messages[?q=text]    the messages, newest first (q filters on sender, recipients, subject)
//	GET    /capture/api/messages/{id}        one message decoded: headers, text, HTML, attachments
//	GET    /capture/api/messages/{id}/raw    the message as an .eml file
//	DELETE /capture/api/messages/{id}        drop one
//	DELETE /capture/api/messages             drop all
//
// pod names the relay in listings.
func Handler(s *Store, pod string) http.Handler {
	mux := http.NewServeMux()
	reply := jsonhttp.Reply
	type result struct {
		Deleted int    `json:"deleted"`
		Error   string `json:"error,omitempty"`
	}
	notFound := func(w http.ResponseWriter, id string) {
		reply(w, http.StatusNotFound, result{Error: "no captured message " + strconv.Quote(id) + " on " + pod + " (deleted, dropped for room, or captured by another relay pod)"})
	}
	files := http.FileServerFS(ui)
	mux.HandleFunc("GET /capture", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/capture/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /capture/{file...}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", contentPolicy)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/ui/" + r.PathValue("file")
		files.ServeHTTP(w, r2)
	})
	mux.HandleFunc("GET /capture/api/messages", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, Listing{Stats: s.Stats(), Pod: pod, Items: s.List(r.URL.Query().Get("q"))})
	})
	mux.HandleFunc("GET /capture/api/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		m := s.Get(r.PathValue("id"))
		if m == nil {
			notFound(w, r.PathValue("id"))
			return
		}
		reply(w, http.StatusOK, Decode(m))
	})
	mux.HandleFunc("GET /capture/api/messages/{id}/raw", func(w http.ResponseWriter, r *http.Request) {
		m := s.Get(r.PathValue("id"))
		if m == nil {
			notFound(w, r.PathValue("id"))
			return
		}
		w.Header().Set("Content-Type", "message/rfc822")
		w.Header().Set("Content-Disposition", `attachment; filename="`+m.ID+`.eml"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(m.data)))
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(m.data)
	})
	mux.HandleFunc("DELETE /capture/api/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !s.Delete(r.PathValue("id")) {
			notFound(w, r.PathValue("id"))
			return
		}
		reply(w, http.StatusOK, result{Deleted: 1})
	})
	mux.HandleFunc("DELETE /capture/api/messages", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, result{Deleted: s.DeleteAll()})
	})
	return mux
}
