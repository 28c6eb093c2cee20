package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// counters are the manager's cumulative API requests and reconciles.
type counters struct {
	requests   map[string]float64 // rest_client_requests_total by HTTP method, all codes and hosts
	reconciles map[string]float64 // controller_runtime_reconcile_total by controller, all results
	cpu        float64            // process_cpu_seconds_total
	// queued and running are gauges (sub keeps the later value): workqueue_depth and
	// controller_runtime_active_workers by controller.
	queued, running map[string]float64
}

// sub returns c minus before.
func (c counters) sub(before counters) counters {
	d := counters{requests: map[string]float64{}, reconciles: map[string]float64{}}
	for m, n := range c.requests {
		d.requests[m] = n - before.requests[m]
	}
	for ctrl, n := range c.reconciles {
		d.reconciles[ctrl] = n - before.reconciles[ctrl]
	}
	d.cpu = c.cpu - before.cpu
	d.queued, d.running = c.queued, c.running
	return d
}

// parseMetrics reads the counters from the Prometheus text format, which is what
// the metrics endpoint serves to a client that asks for nothing else.
func parseMetrics(r io.Reader) (counters, error) {
	c := counters{requests: map[string]float64{}, reconciles: map[string]float64{}, queued: map[string]float64{}, running: map[string]float64{}}
	sawRequests := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			return counters{}, fmt.Errorf("metrics line %q: %w", line, err)
		}
		switch name {
		case "rest_client_requests_total":
			c.requests[labels["method"]] += value
			sawRequests = true
		case "controller_runtime_reconcile_total":
			c.reconciles[labels["controller"]] += value
		case "process_cpu_seconds_total":
			c.cpu = value
		case "workqueue_depth":
			c.queued[labels["name"]] += value
		case "controller_runtime_active_workers":
			c.running[labels["controller"]] += value
		}
	}
	if err := sc.Err(); err != nil {
		return counters{}, err
	}
	if !sawRequests {
		return counters{}, fmt.Errorf("the manager's metrics have no rest_client_requests_total")
	}
	return c, nil
}

// parseSample splits `name{k="v",...} value [timestamp]`.
func parseSample(line string) (name string, labels map[string]string, value float64, err error) {
	labels = map[string]string{}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, 0, fmt.Errorf("no value")
	}
	name, rest := line[:i], line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			key, after, ok := strings.Cut(rest, "=")
			if !ok || !strings.HasPrefix(after, `"`) {
				return "", nil, 0, fmt.Errorf("bad label")
			}
			val, n, err := unquote(after)
			if err != nil {
				return "", nil, 0, err
			}
			labels[strings.TrimSpace(key)] = val
			rest = after[n:]
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, fmt.Errorf("no value")
	}
	value, err = strconv.ParseFloat(fields[0], 64)
	return name, labels, value, err
}

// unquote reads the quoted label value at the start of s and returns it and the
// number of bytes it took.
func unquote(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			if i+1 == len(s) {
				return "", 0, fmt.Errorf("unterminated label value")
			}
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			default:
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(s[i])
		}
	}
	return "", 0, fmt.Errorf("unterminated label value")
}
