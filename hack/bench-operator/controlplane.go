package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kuberelay/kuberelay/internal/testenv"
)

// auditPolicy logs every write request, with its metadata only (who, what, which
// object, the answer), so that the writes the manager makes while idle can be named:
// its own metrics count requests by method alone. Reads are not logged, so the audit
// log costs the API server little.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
`

// controlPlane is testenv's kube-apiserver and etcd, the API server writing an audit
// log of write requests.
type controlPlane struct {
	*testenv.Env
	auditLog string
}

func startControlPlane(dir string) (*controlPlane, error) {
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	cp := &controlPlane{auditLog: filepath.Join(dir, "audit.log")}
	var err error
	cp.Env, err = testenv.Start(
		[2]string{"audit-policy-file", policy},
		[2]string{"audit-log-path", cp.auditLog},
		[2]string{"audit-log-mode", "blocking"}, // each event written when it happens
		[2]string{"audit-log-maxsize", "0"},     // no rotation
	)
	if err != nil {
		return nil, err
	}
	return cp, nil
}

// auditOffset is where the audit log ends now; writes logged after it are read with
// writesSince.
func (cp *controlPlane) auditOffset() int64 {
	fi, err := os.Stat(cp.auditLog)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// auditEvent is the part of an audit.k8s.io/v1 Event the benchmark reads.
type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		APIGroup    string `json:"apiGroup"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	StageTimestamp time.Time `json:"stageTimestamp"`
}

// loggedWrite is one write request as the audit log names it.
type loggedWrite struct {
	verb, resource, object string // resource with its group and subresource: "secrets", "relayclients.relay.kuberelay.io/status"
	code                   int
	at                     time.Time // when it was answered
}

func (w loggedWrite) String() string {
	return fmt.Sprintf("%s %s %s -> %d", w.verb, w.resource, w.object, w.code)
}

// writesSince returns the write requests logged after offset by a client whose user
// agent starts with agent ("manager/": client-go's default is the binary's name, its
// version and platform).
func (cp *controlPlane) writesSince(offset int64, agent string) ([]loggedWrite, error) {
	f, err := os.Open(cp.auditLog)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	var out []loggedWrite
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			// A line being written as the file is read.
			continue
		}
		if ev.Stage != "ResponseComplete" || !strings.HasPrefix(ev.UserAgent, agent) || ev.ObjectRef == nil {
			continue
		}
		w := loggedWrite{verb: ev.Verb, resource: ev.ObjectRef.Resource, object: ev.ObjectRef.Name}
		if ev.ObjectRef.APIGroup != "" {
			w.resource += "." + ev.ObjectRef.APIGroup
		}
		if ev.ObjectRef.Subresource != "" {
			w.resource += "/" + ev.ObjectRef.Subresource
		}
		if ev.ObjectRef.Namespace != "" {
			w.object = ev.ObjectRef.Namespace + "/" + w.object
		}
		if ev.ResponseStatus != nil {
			w.code = ev.ResponseStatus.Code
		}
		w.at = ev.StageTimestamp
		out = append(out, w)
	}
	return out, sc.Err()
}
