package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// genResult is one run of the Go load generator.
type genResult struct {
	sent, failed int
	elapsed      time.Duration
	latencies    []time.Duration // final "." written to 250 read, per message sent
	firstErr     error
}

func (r genResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.sent) / r.elapsed.Seconds()
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// generate opens sessions connections to addr (with STARTTLS if tlsConfig is set) and
// sends n messages over them, n/sessions per connection, one transaction at a time per
// connection. Every message is timed from the call that writes the final "." (the
// DataCommand's CloseWithResponse, which also flushes the part of the message still in
// the client's 4 KiB write buffer) to the 250 being read.
func generate(ctx context.Context, addr string, tlsConfig *tls.Config, sessions, n int, msg []byte) genResult {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	type part struct {
		sent, failed int
		lat          []time.Duration
		err          error
	}
	parts := make([]part, sessions)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range sessions {
		count := n / sessions
		if i < n%sessions {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &parts[i]
			p.lat = make([]time.Duration, 0, count)
			sent, failed, err := session(ctx, addr, tlsConfig, count, msg, &p.lat)
			p.sent, p.failed, p.err = sent, failed, err
		}()
	}
	wg.Wait()
	res := genResult{elapsed: time.Since(start)}
	for _, p := range parts {
		res.sent += p.sent
		res.failed += p.failed
		res.latencies = append(res.latencies, p.lat...)
		if res.firstErr == nil && p.err != nil {
			res.firstErr = p.err
		}
	}
	slices.Sort(res.latencies)
	return res
}

// session sends count messages over one connection. A rejected message is counted
// and the transaction reset; a broken connection ends the session, the rest counted as
// failed.
func session(ctx context.Context, addr string, tlsConfig *tls.Config, count int, msg []byte, lat *[]time.Duration) (sent, failed int, firstErr error) {
	var c *smtp.Client
	var err error
	if tlsConfig != nil {
		c, err = smtp.DialStartTLS(addr, tlsConfig)
	} else {
		c, err = smtp.Dial(addr)
	}
	if err != nil {
		return 0, count, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer c.Close()
	c.CommandTimeout = 30 * time.Second
	c.SubmissionTimeout = 30 * time.Second
	if err := c.Hello(heloName); err != nil {
		return 0, count, err
	}
	for i := range count {
		if ctx.Err() != nil {
			return sent, failed + count - i, ctx.Err()
		}
		d, err := transaction(c, msg)
		if err == nil {
			sent++
			*lat = append(*lat, d)
			continue
		}
		failed++
		if firstErr == nil {
			firstErr = err
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || failed >= 10 || c.Reset() != nil {
			return sent, failed + count - i - 1, firstErr
		}
	}
	_ = c.Quit()
	return sent, failed, firstErr
}

func transaction(c *smtp.Client, msg []byte) (time.Duration, error) {
	if err := c.Mail(sender, nil); err != nil {
		return 0, fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		return 0, fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return 0, fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return 0, fmt.Errorf("writing message: %w", err)
	}
	t := time.Now()
	if _, err := w.CloseWithResponse(); err != nil {
		return 0, fmt.Errorf("final dot: %w", err)
	}
	return time.Since(t), nil
}
