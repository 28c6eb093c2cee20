package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kuberelay/kuberelay/controllers/render"
)

// PodStatus asks a relay pod which configuration it runs.
type PodStatus interface {
	// Report returns what the pod says of itself.
	Report(ctx context.Context, pod *corev1.Pod) (PodReport, error)
	// Drain makes a Queue-mode pod take no more mail and deliver its queue.
	Drain(ctx context.Context, pod *corev1.Pod) error
	// StartChecks asks the pod for a round of checks of the named upstreams and
	// returns the round's start as the pod reports it (to find its results in later
	// reports).
	StartChecks(ctx context.Context, pod *corev1.Pod, upstreams []string) (time.Time, error)
}

// PodReport is what a relay pod's /status says.
type PodReport struct {
	// ConfigHash is the hash of the configuration the pod has loaded.
	ConfigHash string
	// Queued is the number of messages in its queue; nil in PassThrough mode.
	Queued *int64
	// Draining says the pod takes no more mail (POST /queue/drain).
	Draining bool
	// Users are the rate-limited users' use of the current minute, hour and day:
	// messages, then recipients.
	Users map[string][2][3]int64
	// Checks is the pod's last round of upstream checks, if one ran.
	Checks *PodChecks
}

// HTTPPodStatus reads the relay's GET /status on the pod's "http" container port.
type HTTPPodStatus struct {
	// Client makes the requests; its Timeout bounds a pod that does not answer.
	Client *http.Client
}

// maxStatusBytes bounds what is read from a pod: /status is a few hundred bytes, and
// about a hundred more per rate-limited user that sent mail today.
const maxStatusBytes = 4 << 20

func (h *HTTPPodStatus) Report(ctx context.Context, pod *corev1.Pod) (PodReport, error) {
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(podHTTPPort(pod)))) + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return PodReport{}, err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return PodReport{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return PodReport{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var st struct {
		ConfigHash string `json:"configHash"`
		Queue      *struct {
			Messages int64 `json:"messages"`
			Draining bool  `json:"draining"`
		} `json:"queue"`
		RateUse []struct {
			Kind       string   `json:"kind"`
			Name       string   `json:"name"`
			Messages   [3]int64 `json:"messages"`
			Recipients [3]int64 `json:"recipients"`
		} `json:"rateUse"`
		UpstreamChecks *PodChecks `json:"upstreamChecks"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatusBytes)).Decode(&st); err != nil {
		return PodReport{}, fmt.Errorf("GET %s: %w", url, err)
	}
	r := PodReport{ConfigHash: st.ConfigHash, Checks: st.UpstreamChecks}
	if st.Queue != nil {
		r.Queued, r.Draining = &st.Queue.Messages, st.Queue.Draining
	}
	for _, u := range st.RateUse {
		if u.Kind == "user" {
			if r.Users == nil {
				r.Users = map[string][2][3]int64{}
			}
			r.Users[u.Name] = [2][3]int64{u.Messages, u.Recipients}
		}
	}
	return r, nil
}

func (h *HTTPPodStatus) Drain(ctx context.Context, pod *corev1.Pod) error {
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(podHTTPPort(pod)))) + "/queue/drain"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	return nil
}

func (h *HTTPPodStatus) StartChecks(ctx context.Context, pod *corev1.Pod, upstreams []string) (time.Time, error) {
	q := neturl.Values{"upstream": upstreams}
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(podHTTPPort(pod)))) + "/upstreams/check?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return time.Time{}, err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return time.Time{}, fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	var round PodChecks
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatusBytes)).Decode(&round); err != nil {
		return time.Time{}, fmt.Errorf("POST %s: %w", url, err)
	}
	return round.StartedAt, nil
}

// podHTTPPort is the relay container's http port as the pod declares it, so a pod
// from an older template is still asked on the right port; render.HTTPPort if none.
func podHTTPPort(pod *corev1.Pod) int32 {
	for _, c := range pod.Spec.Containers {
		if c.Name != render.ContainerName {
			continue
		}
		for _, p := range c.Ports {
			if p.Name == render.HTTPPortName {
				return p.ContainerPort
			}
		}
	}
	return render.HTTPPort
}

// podReady says whether a pod serves: the operator asks only such pods.
func podReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.PodIP == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podReports asks every pod for its report, a few at a time; errs[i] is set where
// reports[i] could not be read.
func podReports(ctx context.Context, ps PodStatus, pods []*corev1.Pod) (reports []PodReport, errs []error) {
	const parallel = 8
	reports, errs = make([]PodReport, len(pods)), make([]error, len(pods))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			reports[i], errs[i] = ps.Report(ctx, p)
		}()
	}
	wg.Wait()
	return reports, errs
}
