package server

import (
	"errors"
	"net/http"
	"time"

	"github.com/kuberelay/kuberelay/relay/internal/jsonhttp"
	"github.com/kuberelay/kuberelay/relay/queue"
)

// QueueStatus is the queue's size, as /status reports it.
type QueueStatus struct {
	// Draining says the relay takes no more mail (POST /queue/drain).
	Draining      bool    `json:"draining,omitempty"`
	Messages      int     `json:"messages"`
	Bytes         int64   `json:"bytes"`
	OldestSeconds float64 `json:"oldestSeconds"`
}

// QueueStatus returns the queue's size, or nil in PassThrough mode.
func (s *Server) QueueStatus() *QueueStatus {
	if s.queue == nil {
		return nil
	}
	st := s.queue.store.Stats()
	qs := &QueueStatus{Draining: s.draining.Load(), Messages: st.Messages, Bytes: st.Bytes}
	if !st.Oldest.IsZero() {
		qs.OldestSeconds = time.Since(st.Oldest).Seconds()
	}
	return qs
}

// queueListing is GET /queue: the size, and each message's envelope and recipients'
// states. It holds addresses, never message content or credentials.
type queueListing struct {
	QueueStatus
	Items []queue.Envelope `json:"items"`
}

// QueueHandler serves the queue's operations on the relay's HTTP port, or is nil in
// PassThrough mode:
//
//	GET    /queue             the queued messages, oldest first
//	POST   /queue/retry       make every waiting message due now
//	POST   /queue/{id}/retry  make one due now
//	DELETE /queue/{id}        drop one, without delivering it or telling its sender
//	POST   /queue/drain       take no more mail, deliver what is queued (see Drain)
func (s *Server) QueueHandler() http.Handler {
	if s.queue == nil {
		return nil
	}
	d := s.queue.deliverer
	mux := http.NewServeMux()
	reply := jsonhttp.Reply
	type result struct {
		Retried int    `json:"retried,omitempty"`
		Deleted string `json:"deleted,omitempty"`
		Error   string `json:"error,omitempty"`
	}
	mux.HandleFunc("POST /queue/drain", func(w http.ResponseWriter, _ *http.Request) {
		s.Drain()
		reply(w, http.StatusOK, s.QueueStatus())
	})
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, queueListing{QueueStatus: *s.QueueStatus(), Items: d.list()})
	})
	mux.HandleFunc("POST /queue/retry", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, result{Retried: d.retryNow("")})
	})
	mux.HandleFunc("POST /queue/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		if n := d.retryNow(r.PathValue("id")); n == 0 {
			reply(w, http.StatusNotFound, result{Error: errNotQueued.Error() + " waiting for a retry"})
			return
		}
		reply(w, http.StatusOK, result{Retried: 1})
	})
	mux.HandleFunc("DELETE /queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		err := d.remove(id)
		switch {
		case errors.Is(err, errNotQueued):
			reply(w, http.StatusNotFound, result{Error: err.Error()})
		case errors.Is(err, errInFlight):
			reply(w, http.StatusConflict, result{Error: err.Error()})
		case err != nil:
			s.log.Error(err, "deleting a queued message", "queue", id)
			reply(w, http.StatusInternalServerError, result{Error: "could not delete the message"})
		default:
			s.log.Info("queued message deleted by request", "queue", id)
			reply(w, http.StatusOK, result{Deleted: id})
		}
	})
	return mux
}
