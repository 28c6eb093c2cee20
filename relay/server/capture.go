package server

import (
	"bytes"
	"io"
	"net/http"
	"time"

	"github.com/kuberelay/kuberelay/relay/capture"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/metrics"
)

// captureRules say whose mail the capture sink takes instead of an upstream.
type captureRules struct {
	all     bool
	users   map[string]bool
	domains map[string]bool
}

// newCaptureRules reads the rules of a configuration; nil when nothing is captured,
// so the common case costs one nil check per message.
func newCaptureRules(c *config.Config) *captureRules {
	r := &captureRules{all: c.Capture != nil && c.Capture.All, users: map[string]bool{}, domains: map[string]bool{}}
	for _, u := range c.Users {
		if u.Capture {
			r.users[u.Username] = true
		}
	}
	for _, d := range c.Domains {
		if d.Capture {
			r.domains[config.NormalizeDomain(d.Domain)] = true
		}
	}
	if !r.all && len(r.users) == 0 && len(r.domains) == 0 {
		return nil
	}
	return r
}

// captures says whether a message from user (empty if none) with a sender at domain
// (empty for the null sender) is captured.
func (r *captureRules) captures(user, domain string) bool {
	return r != nil && (r.all || user != "" && r.users[user] || domain != "" && r.domains[domain])
}

// CaptureHandler serves the capture sink on the relay's HTTP port (see
// capture.Handler); pod names this relay in its listings.
func (s *Server) CaptureHandler(pod string) http.Handler { return capture.Handler(s.capture, pod) }

// dataCaptured keeps the message in the capture sink, signed as it would have been
// relayed, and answers 250: nothing is sent anywhere.
func (s *session) dataCaptured(dr *dataReader, header string) error {
	msg, done, err := s.signed(dr, header)
	if err != nil {
		return s.dataFailed(dr, err)
	}
	defer done()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, msg); err != nil || dr.err != nil {
		if dr.err != nil {
			err = dr.err
		}
		return s.dataFailed(dr, err)
	}
	m := &capture.Message{ID: s.queueID, Received: time.Now().UTC(), From: s.from, To: append([]string(nil), s.rcpts...), User: s.user}
	s.b.srv.capture.Add(m, buf.Bytes())
	s.b.srv.metrics.MessageBytes.Observe(float64(dr.n))
	s.b.srv.metrics.Messages.WithLabelValues(metrics.OutcomeCaptured, "", s.route).Inc()
	s.log.Info("message captured", "queue", s.queueID, "from", s.from, "recipients", s.rcptOK, "size", dr.n)
	return nil
}
