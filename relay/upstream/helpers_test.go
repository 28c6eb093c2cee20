package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// testUpstream is an upstream over addrs with timeouts generous enough never to fire
// unless a test shortens them.
func testUpstream(t testing.TB, mode config.TLSMode, addrs ...string) config.Upstream {
	t.Helper()
	u := config.Upstream{
		Name:                     "smarthost",
		TLS:                      config.UpstreamTLS{Mode: mode},
		MaxConnections:           4,
		MaxMessagesPerConnection: 100,
		Timeouts: config.UpstreamTimeouts{
			Connect: config.Duration{Duration: 10 * time.Second},
			Command: config.Duration{Duration: 10 * time.Second},
			Data:    config.Duration{Duration: 20 * time.Second},
			Idle:    config.Duration{Duration: time.Minute},
			Acquire: config.Duration{Duration: 10 * time.Second},
		},
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(port)
		u.Endpoints = append(u.Endpoints, config.Endpoint{Host: host, Port: n})
	}
	return u
}

// dialCounter counts the connections a pool opens.
type dialCounter struct{ n atomic.Int64 }

func (d *dialCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func newPool(t testing.TB, u config.Upstream, opts upstream.Options) *upstream.Pool {
	t.Helper()
	if opts.LocalName == "" {
		opts.LocalName = "relay.test"
	}
	p := upstream.New(u, nil, nil, opts)
	t.Cleanup(p.Close)
	return p
}

// outcome is what one message's transaction produced.
type outcome struct {
	rcptErrs []error
	reply    string
	err      error // the transaction's error: from Data, or from Rcpt if no recipient was accepted
	endpoint string
}

// message makes a message whose body carries marker, with a dot-led line to exercise
// dot-stuffing.
func message(marker string) string {
	return "From: a@example.com\r\nSubject: " + marker + "\r\n\r\nbody of " + marker + "\r\n.leading dot\r\n"
}

// send delivers one message through p to rcpts and closes the transaction.
func send(ctx context.Context, p *upstream.Pool, marker string, rcpts ...string) outcome {
	var o outcome
	tx := p.Begin(ctx, "sender@example.com", nil)
	defer tx.Close()
	accepted := 0
	for _, r := range rcpts {
		err := tx.Rcpt(ctx, r, nil)
		o.rcptErrs = append(o.rcptErrs, err)
		if err == nil {
			accepted++
		} else {
			o.err = err
		}
	}
	if accepted > 0 {
		o.err = nil
		o.reply, o.err = tx.Data(ctx, strings.NewReader(message(marker)))
	}
	o.endpoint = tx.Endpoint()
	return o
}

// asError returns err as an *upstream.Error, failing the test if it is not one.
func asError(t testing.TB, err error) *upstream.Error {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not an *upstream.Error", err, err)
	}
	return ue
}

// countMarker counts the messages at a sink whose content carries marker.
func countMarker(t testing.TB, s *testpeers.Sink, marker string) int {
	t.Helper()
	n := 0
	for _, m := range s.Messages(t) {
		if strings.Contains(m.Content, "Subject: "+marker+"\n") {
			n++
		}
	}
	return n
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func describe(o outcome) string {
	return fmt.Sprintf("rcpt errors %v, reply %q, error %v, endpoint %q", o.rcptErrs, o.reply, o.err, o.endpoint)
}
