package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
)

// openIdle opens k connections to addr and leaves each idle after EHLO (after
// STARTTLS, the TLS handshake and a second EHLO if tlsConfig is set). It stops at the
// first failure and returns what it opened with the error.
func openIdle(ctx context.Context, addr string, tlsConfig *tls.Config, k int) ([]net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	const workers = 32
	conns := make([]net.Conn, k)
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= k || ctx.Err() != nil {
					return
				}
				c, err := idleConn(addr, tlsConfig)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("idle connection %d: %w", i+1, err)
					}
					mu.Unlock()
					cancel()
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	open := conns[:0]
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("opening idle connections: %w", ctx.Err())
	}
	return open, firstErr
}

func idleConn(addr string, tlsConfig *tls.Config) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fail := func(err error) (net.Conn, error) {
		conn.Close()
		return nil, err
	}
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return fail(fmt.Errorf("greeting: %w", err))
	}
	if err := ehlo(tp); err != nil {
		return fail(err)
	}
	var c net.Conn = conn
	if tlsConfig != nil {
		if err := tp.PrintfLine("STARTTLS"); err != nil {
			return fail(err)
		}
		if _, _, err := tp.ReadResponse(220); err != nil {
			return fail(fmt.Errorf("STARTTLS: %w", err))
		}
		tc := tls.Client(conn, tlsConfig)
		if err := tc.Handshake(); err != nil {
			return fail(fmt.Errorf("TLS handshake: %w", err))
		}
		if err := ehlo(textproto.NewConn(tc)); err != nil {
			return fail(err)
		}
		c = tc
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

func ehlo(tp *textproto.Conn) error {
	if err := tp.PrintfLine("EHLO %s", heloName); err != nil {
		return err
	}
	if _, _, err := tp.ReadResponse(250); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	return nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// memSample is the relay's memory as the kernel and the Go runtime see it.
type memSample struct {
	rssKiB                 int64 // VmRSS from /proc/<pid>/status
	heapInuse, stackInuse  float64
	goroutines, connsPlain float64
	connsTLS               float64
}

// scrape reads a few gauges from the relay's /metrics.
func scrape(httpAddr string) (map[string]float64, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, nil
}

// sampleMem takes reads readings spaced by gap and keeps the largest RSS (the kernel
// figure moves as the runtime returns and reuses pages); the Go figures are from the
// last reading.
func sampleMem(pid int, httpAddr string, reads int, gap time.Duration) (memSample, error) {
	var m memSample
	for i := range reads {
		if i > 0 {
			time.Sleep(gap)
		}
		rss, _, err := proc.Memory(pid)
		if err != nil {
			return m, err
		}
		m.rssKiB = max(m.rssKiB, rss>>10)
	}
	g, err := scrape(httpAddr)
	if err != nil {
		return m, err
	}
	m.heapInuse = g["go_memstats_heap_inuse_bytes"]
	m.stackInuse = g["go_memstats_stack_inuse_bytes"]
	m.goroutines = g["go_goroutines"]
	m.connsPlain = g[`kuberelay_relay_connections_open{listener="plain"}`]
	m.connsTLS = g[`kuberelay_relay_connections_open{listener="starttls"}`]
	return m, nil
}

// idleCost is the result of one idle-connection measurement.
type idleCost struct {
	label, note       string
	k                 int
	before, after     memSample
	err               error
	rssPerConnKiB     float64
	heapPerConnKiB    float64
	stackPerConnKiB   float64
	goroutinesPerConn float64
}

func (c *idleCost) compute() {
	if c.k == 0 {
		return
	}
	k := float64(c.k)
	c.rssPerConnKiB = float64(c.after.rssKiB-c.before.rssKiB) / k
	c.heapPerConnKiB = (c.after.heapInuse - c.before.heapInuse) / 1024 / k
	c.stackPerConnKiB = (c.after.stackInuse - c.before.stackInuse) / 1024 / k
	c.goroutinesPerConn = (c.after.goroutines - c.before.goroutines) / k
}

// cpuTime is the user+system CPU time of process pid so far (all threads), from
// /proc/<pid>/stat in clock ticks of 10ms (USER_HZ is 100 on Linux); -1 if unreadable.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name in parentheses may hold spaces; fields follow the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}
