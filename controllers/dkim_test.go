package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
	relaydkim "github.com/kuberelay/kuberelay/relay/dkim"
)

// dnsZone is an authoritative DNS server on 127.0.0.1 (UDP) answering TXT queries
// from records the test publishes.
type dnsZone struct {
	addr string
	mu   sync.Mutex
	txt  map[string]string // absolute name -> record
}

func startDNS(t *testing.T) *dnsZone {
	t.Helper()
	z := &dnsZone{txt: map[string]string{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			z.mu.Lock()
			v, ok := z.txt[strings.ToLower(q.Name)]
			z.mu.Unlock()
			if ok && q.Qtype == dns.TypeTXT {
				// Long values in 255-byte strings, as DNS stores them.
				var parts []string
				for len(v) > 255 {
					parts, v = append(parts, v[:255]), v[255:]
				}
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1}, Txt: append(parts, v)})
			}
		}
		if len(m.Answer) == 0 {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return z
}

func (z *dnsZone) publish(r relayv1alpha1.DKIMRecord) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.txt[strings.ToLower(r.Name)+"."] = r.Value
}

// lookup resolves TXT records at the zone, as a receiver verifying DKIM would.
func (z *dnsZone) lookup(name string) ([]string, error) {
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, z.addr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return res.LookupTXT(ctx, strings.TrimSuffix(name, ".")+".")
}

// TestDKIMRotation follows generated keys against a local DNS server: the first key
// signs once its record is in DNS (the domain is relayed unsigned until then); a
// rotation makes a pending key and mail stays signed with the first until the new
// record is in DNS; then the new key signs and the old one retires after retireAfter. Each stage's mail, signed with the key
// relay.yaml names, verifies with go-msgauth against the zone.
func TestDKIMRotation(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	zone := startDNS(t)
	ns := namespace(t, "dkim-rotate")
	relay := newRelay(ns, "outbound", withSmarthost("mta"))
	d := newDomain(ns, "example", "example.com", ref("outbound"), func(s *relayv1alpha1.RelayDomainSpec) {
		s.DKIM = &relayv1alpha1.DKIMSigning{Generate: &relayv1alpha1.DKIMGenerate{Algorithm: "Ed25519",
			RetireAfter: &metav1.Duration{Duration: 3 * time.Second}, Resolver: zone.addr}}
	})
	create(t, newSmarthost(ns, "mta", "mta.corp.example", 25, plainText), relay, d)

	// status returns the domain's DKIM status once cond holds for it.
	status := func(cond func(*relayv1alpha1.DKIMStatus) string) *relayv1alpha1.DKIMStatus {
		t.Helper()
		var st *relayv1alpha1.DKIMStatus
		eventually(t, func() string {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				return err.Error()
			}
			st = d.Status.DKIM
			if st == nil {
				return "no status.dkim yet"
			}
			return cond(st)
		})
		return st
	}
	// signedBy signs a message with the key relay.yaml names and verifies it at the
	// zone; it returns the selector that signed.
	signedBy := func(want string) {
		t.Helper()
		eventually(t, func() string {
			l, msg := loadRendered(ns, "outbound")
			if l == nil {
				return msg
			}
			for _, dom := range l.Config.Domains {
				if dom.Domain == "example.com" && (dom.DKIM == nil || dom.DKIM.Selector != want) {
					return fmt.Sprintf("relay.yaml signs with %+v, want %s", dom.DKIM, want)
				}
			}
			return ""
		})
		l, _ := loadRendered(ns, "outbound")
		key := &relaydkim.Key{Domain: "example.com", Selector: want, Signer: l.DKIMKeys["example.com"]}
		body := "From: noreply@example.com\r\nTo: a@example.net\r\nSubject: signed by " + want + "\r\n\r\nHello.\r\n"
		sig, err := key.Sign(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader([]byte(sig+body)), &dkim.VerifyOptions{LookupTXT: zone.lookup})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || !strings.Contains(sig, "s="+want+";") {
			t.Fatalf("mail signed with %s does not verify: %v %+v\n%s", want, err, vs, sig)
		}
	}

	// The first key waits for its record too: unsigned until then.
	first := status(func(st *relayv1alpha1.DKIMStatus) string {
		if st.SigningSelector != "" || st.PendingSelector == "" || len(st.Records) != 1 || st.Records[0].State != render.DKIMStatePending {
			return fmt.Sprintf("status.dkim %s", toString(st))
		}
		return ""
	})
	s1 := first.PendingSelector
	if l, msg := loadRendered(ns, "outbound"); l == nil || len(l.Config.Domains) != 1 || l.Config.Domains[0].DKIM != nil {
		t.Fatalf("before its key is published the domain should be relayed unsigned: %s %+v", msg, l)
	}
	zone.publish(first.Records[0].DKIMRecord)
	status(func(st *relayv1alpha1.DKIMStatus) string {
		if st.SigningSelector != s1 || st.PendingSelector != "" || len(st.Records) != 1 {
			return fmt.Sprintf("status.dkim %s", toString(st))
		}
		return ""
	})
	signedBy(s1)

	// A rotation: a pending key; mail stays signed with the first key.
	update(t, d, func() { d.Annotations = map[string]string{render.RotateDKIMAnnotation: "2026-12"} })
	pending := status(func(st *relayv1alpha1.DKIMStatus) string {
		if st.PendingSelector == "" || st.SigningSelector != s1 || len(st.Records) != 2 || st.Records[1].State != render.DKIMStatePending {
			return fmt.Sprintf("status.dkim %s", toString(st))
		}
		return ""
	})
	s2 := pending.PendingSelector
	signedBy(s1)

	// Its record in DNS: the switch, with the first key retiring.
	zone.publish(pending.Records[1].DKIMRecord)
	status(func(st *relayv1alpha1.DKIMStatus) string {
		if st.SigningSelector != s2 || st.PendingSelector != "" || len(st.Records) != 2 || st.Records[1].Selector != s1 ||
			st.Records[1].State != render.DKIMStateRetiring || st.Records[1].RetireAt == nil {
			return fmt.Sprintf("status.dkim %s", toString(st))
		}
		return ""
	})
	signedBy(s2)

	// retireAfter later the first key is gone, from the status and the Secret.
	status(func(st *relayv1alpha1.DKIMStatus) string {
		if len(st.Records) != 1 || st.Records[0].Selector != s2 {
			return fmt.Sprintf("status.dkim %s", toString(st))
		}
		return ""
	})
	sec := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "example-dkim"}, sec); err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Data[s1+".key"]; ok || !metav1.IsControlledBy(sec, d) {
		t.Errorf("the retired key is still in the Secret, or the Secret is not the domain's: %v", sec.OwnerReferences)
	}
	noSecretIn(t, ns, string(sec.Data[s2+".key"]))
}
