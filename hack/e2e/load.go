package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// loadSummary is what `check -load` prints on its "load-summary: " line.
type loadSummary struct {
	Messages    int      `json:"messages"`
	Concurrency int      `json:"concurrency"`
	Accepted    []string `json:"accepted"`
	GivenUp     []string `json:"givenUp"`
	Refused     []string `json:"refused"`
	Replies4xx  int      `json:"replies4xx"`
	ConnErrors  int      `json:"connErrors"`
	Retries     int      `json:"retries"`
	Connections int      `json:"connections"`
	Sample4xx   []string `json:"sample4xx"`
	SampleErrs  []string `json:"sampleErrors"`
	Sample5xx   []string `json:"sample5xx"`
	DurationMS  int64    `json:"durationMs"`
	Unknown     []string `json:"unknown"`
}

type loadRun struct {
	out  string
	err  error
	done time.Time
}

// underLoad sends a continuous load from the client pod to the Service on port 25
// while the relay goes through a rolling change (an upgrade: spec.image set to
// another image reference) and then a scale-down from 2 replicas to 1. Every message the
// client saw answered 250 must reach the capture smarthost; every 4xx or broken
// connection is retried by the client, and none may be given up.
func (e *e2e) underLoad(svc25 string) {
	const name = "under load: rolling change then scale-down to 1, every message answered 250 is delivered, none given up"
	prefix := "e2e-load-" + randomString()[:8]
	args := []string{"-n", ns, "exec", "client", "--", "/check", "-smtp", svc25, "-starttls",
		"-from", "noreply@example.com", "-to", "someone@example.net",
		"-load", fmt.Sprint(*loadN), "-concurrency", fmt.Sprint(*loadC), "-interval", loadPause.String(), "-per-session", fmt.Sprint(*loadPerConn),
		"-id-prefix", prefix, "-timeout", "5m"}
	start := time.Now()
	done := make(chan loadRun, 1)
	go func() {
		out, err := e.kubectl(6*time.Minute, args...)
		done <- loadRun{out: out, err: err, done: time.Now()}
	}()
	e.logf("load: %d messages over %d concurrent sessions (%d messages each, %s apart), ids %s-NNNNNN", *loadN, *loadC, *loadPerConn, *loadPause, prefix)

	// Let the load reach the relay before anything changes.
	var early *loadRun
	select {
	case r := <-done:
		early = &r
	case <-time.After(3 * time.Second):
	}
	var rollEnd, scaleEnd time.Time
	if early == nil {
		t := time.Now()
		err := e.rollingChange()
		rollEnd = time.Now()
		e.time("under load: rolling change (spec.image upgrade) to new pods Ready, old gone", rollEnd.Sub(t))
		e.check("under load: rolling change of the relay Deployment completes", err)

		t = time.Now()
		err = e.scaleDown(1)
		scaleEnd = time.Now()
		e.time("under load: scale-down 2 to 1 to the removed pod gone", scaleEnd.Sub(t))
		e.check("under load: scale-down of the SmtpRelay to 1 replica completes", err)
	}

	var run loadRun
	if early != nil {
		run = *early
	} else {
		run = <-done
	}
	e.time(fmt.Sprintf("under load: %d messages sent (load start to end)", *loadN), run.done.Sub(start))
	e.check(name, func() error {
		var sum loadSummary
		var line string
		for _, l := range strings.Split(run.out, "\n") {
			if s, ok := strings.CutPrefix(l, "load-summary: "); ok {
				line = s
			}
		}
		if line == "" {
			return fmt.Errorf("the load printed no summary: %v", wrap(run.err, run.out))
		}
		if err := json.Unmarshal([]byte(line), &sum); err != nil {
			return fmt.Errorf("load summary: %v: %s", err, tail(line, 300))
		}
		e.logf("load: %d accepted, %d given up, %d refused (5xx), %d 4xx replies, %d connection errors, %d retries, %d sessions, %d with a lost DATA reply, %s",
			len(sum.Accepted), len(sum.GivenUp), len(sum.Refused), sum.Replies4xx, sum.ConnErrors, sum.Retries, sum.Connections, len(sum.Unknown),
			(time.Duration(sum.DurationMS) * time.Millisecond).Round(time.Millisecond))
		e.notes = append(e.notes, fmt.Sprintf("under load: %d messages over %d sessions at a time: %d answered 250, %d given up, %d refused 5xx; %d 4xx replies and %d connection errors, all retried (%d retries, %d sessions, %d DATA replies lost)",
			sum.Messages, sum.Concurrency, len(sum.Accepted), len(sum.GivenUp), len(sum.Refused), sum.Replies4xx, sum.ConnErrors, sum.Retries, sum.Connections, len(sum.Unknown)))
		e.logf("load: 4xx replies seen: %q", sum.Sample4xx)
		e.logf("load: connection errors seen: %q", sum.SampleErrs)
		if len(sum.Sample5xx) > 0 {
			e.logf("load: 5xx replies seen: %q", sum.Sample5xx)
		}
		var problems []string
		if early != nil {
			problems = append(problems, "the load ended before the rolling change started: nothing was tested under load")
		} else if run.done.Before(scaleEnd) {
			problems = append(problems, fmt.Sprintf("the load ended %s before the scale-down completed", scaleEnd.Sub(run.done).Round(time.Millisecond)))
		}
		if len(sum.GivenUp) > 0 {
			problems = append(problems, fmt.Sprintf("%d messages given up after retries: %v", len(sum.GivenUp), firstN(sum.GivenUp, 10)))
		}
		if len(sum.Refused) > 0 {
			problems = append(problems, fmt.Sprintf("%d messages refused with 5xx: %v %q", len(sum.Refused), firstN(sum.Refused, 10), sum.Sample5xx))
		}
		if n := len(sum.Accepted) + len(sum.GivenUp) + len(sum.Refused); n != *loadN {
			problems = append(problems, fmt.Sprintf("the summary accounts for %d messages, not %d", n, *loadN))
		}

		// Every id answered 250 reaches the capture (at least once).
		t := time.Now()
		counts, missing := e.loadDelivered(prefix, sum.Accepted, 60*time.Second)
		e.time("under load: load end to every accepted message captured", time.Since(t))
		dups := 0
		for _, c := range counts {
			if c > 1 {
				dups += c - 1
			}
		}
		e.logf("load: %d distinct ids captured, %d duplicate deliveries, %d accepted ids missing", len(counts), dups, len(missing))
		e.notes = append(e.notes, fmt.Sprintf("under load: %d distinct ids captured, %d duplicate deliveries, %d answered 250 and missing", len(counts), dups, len(missing)))
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("LOST: %d messages answered 250 never reached the smarthost within 60s: %v", len(missing), firstN(missing, 20)))
			e.dump()
		}
		if len(problems) > 0 {
			return errors.New(strings.Join(problems, "; "))
		}
		return nil
	}())
}

// loadDelivered waits up to bound for every accepted id to be in the capture and
// returns how many times each id of the load was captured and the accepted ids that
// never were.
func (e *e2e) loadDelivered(prefix string, accepted []string, bound time.Duration) (map[string]int, []string) {
	deadline := time.Now().Add(bound)
	key := []byte("\r\nSubject: " + prefix + "-")
	for {
		counts := map[string]int{}
		for _, m := range e.capture.Messages() {
			i := bytes.Index(m.Data, key)
			if i < 0 {
				continue
			}
			rest := m.Data[i+len("\r\nSubject: "):]
			if j := bytes.Index(rest, []byte("\r\n")); j >= 0 {
				counts[string(rest[:j])]++
			}
		}
		var missing []string
		for _, id := range accepted {
			if counts[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return counts, missing
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// deploymentState is the relay Deployment and all its pods, terminating ones included.
type deploymentState struct {
	generation, observed          int64
	replicas, updated, available  int32
	pods, terminating, oldVersion int
	images                        []string // the relay containers' images, distinct, sorted
}

func (e *e2e) deploymentState() (deploymentState, error) {
	var d deploymentState
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "deployment", relayName, "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var dep struct {
		Metadata struct {
			Generation int64 `json:"generation"`
		} `json:"metadata"`
		Spec struct {
			Replicas int32 `json:"replicas"`
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
		} `json:"spec"`
		Status struct {
			ObservedGeneration int64 `json:"observedGeneration"`
			UpdatedReplicas    int32 `json:"updatedReplicas"`
			AvailableReplicas  int32 `json:"availableReplicas"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &dep); err != nil {
		return d, err
	}
	d.generation, d.observed = dep.Metadata.Generation, dep.Status.ObservedGeneration
	d.replicas, d.updated, d.available = dep.Spec.Replicas, dep.Status.UpdatedReplicas, dep.Status.AvailableReplicas
	var sel []string
	for k, v := range dep.Spec.Selector.MatchLabels {
		sel = append(sel, k+"="+v)
	}
	// The newest ReplicaSet's pod-template-hash.
	out, err = e.kubectl(15*time.Second, "-n", ns, "get", "replicasets", "-l", strings.Join(sel, ","), "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var rss struct {
		Items []struct {
			Metadata struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &rss); err != nil {
		return d, err
	}
	newest, rev := "", -1
	for _, rs := range rss.Items {
		var r int
		fmt.Sscan(rs.Metadata.Annotations["deployment.kubernetes.io/revision"], &r)
		if r > rev {
			newest, rev = rs.Metadata.Labels["pod-template-hash"], r
		}
	}
	out, err = e.kubectl(15*time.Second, "-n", ns, "get", "pods", "-l", strings.Join(sel, ","), "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var pods struct {
		Items []struct {
			Metadata struct {
				Labels            map[string]string `json:"labels"`
				DeletionTimestamp *string           `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Image string `json:"image"`
				} `json:"containers"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		return d, err
	}
	for _, p := range pods.Items {
		d.pods++
		if p.Metadata.DeletionTimestamp != nil {
			d.terminating++
		}
		if p.Metadata.Labels["pod-template-hash"] != newest {
			d.oldVersion++
		}
		for _, c := range p.Spec.Containers {
			if !slices.Contains(d.images, c.Image) {
				d.images = append(d.images, c.Image)
			}
		}
	}
	slices.Sort(d.images)
	return d, nil
}

func (d deploymentState) String() string {
	return fmt.Sprintf("generation %d observed %d, replicas %d updated %d available %d; pods %d (terminating %d, old template %d), images %v",
		d.generation, d.observed, d.replicas, d.updated, d.available, d.pods, d.terminating, d.oldVersion, d.images)
}

// rollingChange upgrades the relay as a user would: spec.image names another image
// (the same content under a second tag, since nothing can be pulled here). It waits
// until the Deployment runs only new pods on that image, all available, the old
// ones gone.
func (e *e2e) rollingChange() error {
	before, err := e.deploymentState()
	if err != nil {
		return err
	}
	next := e.image + "-next"
	sock := filepath.Join(e.state, "containerd/containerd.sock")
	if out, err := e.cmd(time.Minute, "", "ctr", "-a", sock, "-n", "k8s.io", "images", "tag", "--force", e.image, next); err != nil {
		return fmt.Errorf("tagging the image as %s: %v\n%s", next, err, out)
	}
	patch := fmt.Sprintf(`{"spec":{"image":%q}}`, next)
	if out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", patch); err != nil {
		return wrap(err, out)
	}
	var d deploymentState
	err = poll(*rollBound, 200*time.Millisecond, func() (bool, error) {
		var err error
		d, err = e.deploymentState()
		if err != nil {
			return false, nil
		}
		return d.generation > before.generation && d.observed >= d.generation && d.replicas == 2 &&
			d.updated == 2 && d.available == 2 && d.pods == 2 && d.oldVersion == 0 && d.terminating == 0 &&
			len(d.images) == 1 && d.images[0] == next, nil
	})
	if err != nil {
		return fmt.Errorf("%v: %s", err, d)
	}
	return nil
}

// scaleDown sets spec.replicas and waits until the Deployment runs that many pods,
// the removed ones gone.
func (e *e2e) scaleDown(n int32) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", patch); err != nil {
		return wrap(err, out)
	}
	var d deploymentState
	err := poll(*rollBound, 200*time.Millisecond, func() (bool, error) {
		var err error
		d, err = e.deploymentState()
		if err != nil {
			return false, nil
		}
		return d.replicas == n && d.observed >= d.generation && d.available == n && d.pods == int(n) && d.terminating == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%v: %s", err, d)
	}
	return nil
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... %d more", len(s)-n))
	}
	return s
}
