package localrun

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/gobuild"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testenv"
	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// TestEndToEnd runs the samples as `make run` does and sends real mail through them:
// swaks authenticates on the submission listener with STARTTLS, the relay delivers
// to the capture smarthost over STARTTLS with the sample's credentials, DKIM-signed
// with the key whose DNS record the RelayDomain publishes. Then a RelayDomain edit
// reaches the same relay process by hot reload.
func TestEndToEnd(t *testing.T) {
	swaks := testpeers.RequireSwaksTLS(t)
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "relay")
	ctx := context.Background()
	if err := gobuild.Build(ctx, "./relay/cmd/relay", bin); err != nil {
		t.Fatal(err)
	}
	run, err := Start(ctx, Options{Dir: t.TempDir(), RelayBinary: bin, Samples: filepath.Join(root, "config", "samples"),
		HTTPAddress: "127.0.0.1:" + freePort(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer run.Stop()
	pid := run.RelayPID()

	send := func(subject string) {
		t.Helper()
		cmd := exec.Command(swaks, "--server", "127.0.0.1:10587", "--tls", "--auth", "PLAIN",
			"--auth-user", "billing", "--auth-password", "replace-with-a-long-random-password",
			"--from", "billing@example.com", "--to", "someone@example.net",
			"--header", "Subject: "+subject, "--body", "Hello from the local run.\n", "--timeout", "20")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("swaks: %v\n%s\nrelay log: %s", err, out, run.RelayLog)
		}
	}
	domain := &relayv1alpha1.RelayDomain{}
	domainKey := types.NamespacedName{Namespace: Namespace, Name: "example-com"}
	// verify checks msg's DKIM signature against the record the domain publishes now.
	verify := func(msg mailcapture.Message, selector string) {
		t.Helper()
		if err := run.Env.Client.Get(ctx, domainKey, domain); err != nil {
			t.Fatal(err)
		}
		rec := domain.Status.DKIMRecord
		if rec == nil || rec.Name != selector+"._domainkey.example.com" {
			t.Fatalf("DKIM record published: %+v; want selector %s", rec, selector)
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg.Data), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
			if name != rec.Name {
				return nil, fmt.Errorf("no TXT record %s", name)
			}
			return []string{rec.Value}, nil
		}})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.com" {
			t.Fatalf("DKIM verification: %v %+v\n%s", err, vs, msg.Data)
		}
	}

	send("first")
	msgs := run.Capture.Wait(1, 30*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("captured %d messages; relay log: %s", len(msgs), run.RelayLog)
	}
	if msgs[0].User != "AKIAEXAMPLEEXAMPLE" || msgs[0].From != "billing@example.com" || msgs[0].File == "" {
		t.Errorf("delivered as user %q from %q to file %q", msgs[0].User, msgs[0].From, msgs[0].File)
	}
	verify(msgs[0], "k2026")

	// The operator asks the running relay which configuration it has.
	relay := &relayv1alpha1.SmtpRelay{}
	waitFor(t, func() string {
		if err := run.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: RelayName}, relay); err != nil {
			return err.Error()
		}
		if !apimeta.IsStatusConditionTrue(relay.Status.Conditions, relayv1alpha1.ConfigAppliedCondition) || !apimeta.IsStatusConditionTrue(relay.Status.Conditions, relayv1alpha1.ReadyCondition) {
			return "relay status: " + fmt.Sprint(relay.Status.Conditions)
		}
		return ""
	})

	// A new DKIM selector: the operator re-renders, the files change on disk, the same
	// relay process reloads, and the next message is signed with it.
	oldHash := relay.Status.ConfigHash
	if err := run.Env.Client.Get(ctx, domainKey, domain); err != nil {
		t.Fatal(err)
	}
	domain.Spec.DKIM.Selector = "k2027"
	if err := run.Env.Client.Update(ctx, domain); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() string {
		if err := run.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: RelayName}, relay); err != nil {
			return err.Error()
		}
		if relay.Status.ConfigHash == oldHash {
			return "not re-rendered yet"
		}
		if h := relayHash(t, run.HTTPAddress); h != relay.Status.ConfigHash {
			return fmt.Sprintf("the relay runs %s, the operator rendered %s", h, relay.Status.ConfigHash)
		}
		return ""
	})
	send("second")
	msgs = run.Capture.Wait(2, 30*time.Second)
	if len(msgs) != 2 {
		t.Fatalf("captured %d messages after the edit", len(msgs))
	}
	verify(msgs[1], "k2027")
	if run.RelayPID() != pid || run.RelayExited() {
		t.Error("the relay was restarted for a configuration change")
	}
}

func relayHash(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var st struct {
		ConfigHash string `json:"configHash"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err.Error()
	}
	return st.ConfigHash
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// waitFor waits for cond (see testenv.Eventually); the local run starts several
// processes, so its bound is longer.
func waitFor(t *testing.T, cond func() string) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, cond)
}
