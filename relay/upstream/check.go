package upstream

import (
	"context"
	"errors"
	"sync"
	"time"
)

// EndpointCheck is what connecting to one endpoint as a delivery would (TCP, the
// greeting, EHLO, STARTTLS with verification, AUTH) found, without sending mail.
type EndpointCheck struct {
	// Endpoint is "host:port".
	Endpoint string `json:"endpoint"`
	// Reachable: connected, greeted and (with TLS) secured.
	Reachable bool `json:"reachable"`
	// AuthAccepted says whether the upstream took the login; absent when the upstream
	// has no AUTH configured or the check did not get that far.
	AuthAccepted *bool `json:"authAccepted,omitempty"`
	// Error is what failed, with the upstream's reply (sanitised); never a password,
	// client secret or token.
	Error      string `json:"error,omitempty"`
	DurationMS int64  `json:"durationMS"`
}

// Check connects to each endpoint once, concurrently, and closes each connection with
// QUIT; no connection joins the pool. It never sends MAIL.
func (p *Pool) Check(ctx context.Context) []EndpointCheck {
	out := make([]EndpointCheck, len(p.addrs))
	var wg sync.WaitGroup
	for ep := range p.addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			r := EndpointCheck{Endpoint: p.addrs[ep]}
			cn, e := p.dial(ctx, ep)
			switch {
			case e == nil:
				r.Reachable = true
				if p.creds != nil {
					r.AuthAccepted = ptrTo(true)
				}
				cn.close()
			case e.auth:
				r.Reachable = true
				r.AuthAccepted = ptrTo(false)
				r.Error = e.Error()
			default:
				r.Error = e.Error()
			}
			if errors.Is(ctx.Err(), context.Canceled) && r.Error != "" {
				r.Error = "check cancelled: " + r.Error
			}
			r.DurationMS = time.Since(start).Milliseconds()
			out[ep] = r
		}()
	}
	wg.Wait()
	return out
}

func ptrTo[T any](v T) *T { return &v }
