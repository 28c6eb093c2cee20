package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

type pod struct {
	name, uid, ip string
	smtpPort      string // the container port of the "smtp" listener
	subPort       string // the container port of the "submission" listener
	restarts      int
}

func (e *e2e) relayPods() ([]pod, error) {
	st, err := e.relayStatus()
	if err != nil {
		return nil, err
	}
	sel := st.Status.Selector
	if sel == "" {
		sel = "app.kubernetes.io/instance=" + relayName
	}
	out, err := e.kubectl(20*time.Second, "-n", ns, "get", "pods", "-l", sel, "-o", "json")
	if err != nil {
		return nil, wrap(err, out)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				UID               string  `json:"uid"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Ports []struct {
						Name          string `json:"name"`
						ContainerPort int    `json:"containerPort"`
					} `json:"ports"`
				} `json:"containers"`
			} `json:"spec"`
			Status struct {
				PodIP             string `json:"podIP"`
				ContainerStatuses []struct {
					RestartCount int `json:"restartCount"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	var pods []pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := pod{name: it.Metadata.Name, uid: it.Metadata.UID, ip: it.Status.PodIP, smtpPort: "10025", subPort: "587"}
		for _, c := range it.Spec.Containers {
			for _, cp := range c.Ports {
				switch cp.Name {
				case "smtp":
					p.smtpPort = fmt.Sprint(cp.ContainerPort)
				case "submission":
					p.subPort = fmt.Sprint(cp.ContainerPort)
				}
			}
		}
		for _, c := range it.Status.ContainerStatuses {
			p.restarts += c.RestartCount
		}
		pods = append(pods, p)
	}
	return pods, nil
}

func (e *e2e) samePods(want []pod) error {
	got, err := e.relayPods()
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("pods now %v, before %v", got, want)
	}
	uids := map[string]bool{}
	for _, p := range want {
		uids[p.uid] = true
	}
	for _, p := range got {
		if !uids[p.uid] {
			return fmt.Errorf("pod %s (uid %s) is new; before: %v", p.name, p.uid, want)
		}
		if p.restarts != 0 {
			return fmt.Errorf("pod %s restarted %d times", p.name, p.restarts)
		}
	}
	return nil
}

// podsRunHash asks each pod's /status through the API server's pod proxy.
func (e *e2e) podsRunHash(pods []pod, hash string) error {
	for _, p := range pods {
		out, err := e.kubectl(15*time.Second, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:9090/proxy/status", ns, p.name))
		if err != nil {
			return fmt.Errorf("GET %s /status: %v", p.name, wrap(err, out))
		}
		var s struct {
			ConfigHash string `json:"configHash"`
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return fmt.Errorf("pod %s /status: %v: %s", p.name, err, out)
		}
		if s.ConfigHash != hash {
			return fmt.Errorf("pod %s runs %s, the relay's status says %s", p.name, s.ConfigHash, hash)
		}
	}
	return nil
}

func (e *e2e) relayStatus() (relayStatus, error) {
	var s relayStatus
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "smtprelay", relayName, "-o", "json")
	if err != nil {
		return s, wrap(err, out)
	}
	return s, json.Unmarshal([]byte(out), &s)
}

func (e *e2e) waitStatus(bound time.Duration, ok func(relayStatus) bool) (relayStatus, error) {
	var st relayStatus
	var last error
	err := poll(bound, 100*time.Millisecond, func() (bool, error) {
		st, last = e.relayStatus()
		return last == nil && ok(st), nil
	})
	if err != nil {
		return st, fmt.Errorf("not within %s (last error %v): %s", bound, last, st)
	}
	return st, nil
}

// relayTable reads `kubectl get smtprelay` as a user does, through the printer
// columns, and compares the named columns with want.
func (e *e2e) relayTable(want map[string]string) error {
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "smtprelay", relayName)
	if err != nil {
		return wrap(err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		return fmt.Errorf("want a header and one row:\n%s", out)
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	if len(header) != len(row) {
		return fmt.Errorf("columns do not line up (an empty cell?):\n%s", out)
	}
	for col, v := range want {
		i := slices.Index(header, col)
		if i < 0 {
			return fmt.Errorf("no column %s:\n%s", col, out)
		}
		if row[i] != v {
			return fmt.Errorf("%s is %q, want %q:\n%s", col, row[i], v, out)
		}
	}
	e.logf("kubectl get smtprelay:\n%s", out)
	return nil
}

func (e *e2e) dump() {
	for _, args := range [][]string{
		{"-n", ns, "get", "smtprelay,smarthost,relaydomain,pods,deployments", "-o", "wide"},
		{"-n", ns, "describe", "smtprelay", relayName},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", releaseNS, "logs", "deployment/" + releaseName, "--tail=40"},
	} {
		out, _ := e.kubectl(20*time.Second, args...)
		fmt.Printf("--- kubectl %s\n%s\n", strings.Join(args, " "), tail(out, 4000))
	}
}
