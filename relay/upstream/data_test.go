package upstream_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// failingReader yields some of a message, then fails like a client going away.
type failingReader struct {
	data io.Reader
	err  error
}

func (f *failingReader) Read(b []byte) (int, error) {
	n, err := f.data.Read(b)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

var errClientGone = errors.New("client went away")

// TestReaderErrorMidData: when the message source fails, the upstream connection is
// closed without the final dot, so the upstream never gets a (partial) message, and the
// reader's error comes back.
func TestReaderErrorMidData(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	b := testpeers.StartSink(t)
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr, b.Addr), upstream.Options{})
	ctx := ctxFor(t)
	tx := p.Begin(ctx, "a@example.com", nil)
	if err := tx.Rcpt(ctx, "r@example.net", nil); err != nil {
		t.Fatal(err)
	}
	// Large enough that part of it reaches the upstream before the failure.
	body := "Subject: partial\r\n\r\n" + strings.Repeat("line of the message\r\n", 20000)
	_, err := tx.Data(ctx, &failingReader{data: strings.NewReader(body), err: errClientGone})
	if !errors.Is(err, errClientGone) {
		t.Fatalf("Data = %v, want it to wrap the reader's error", err)
	}
	tx.Close()
	if st := p.Stats(); st != (upstream.Stats{}) {
		t.Fatalf("stats %+v: the connection must be closed, not pooled", st)
	}
	c := s.WaitSessions(t, 1)
	// smtp-sink may count the aborted session ended a moment before it removes the
	// transaction's dump: a delivered message would stay, an aborted one goes.
	if c.Messages != 0 || !testpeers.Eventually(func() bool { return len(s.Messages(t)) == 0 }) {
		t.Fatalf("upstream received a message (counters %+v)", c)
	}
	if len(b.Messages(t)) != 0 {
		t.Fatal("second endpoint received a message")
	}
}

// TestBareLineEndingsRefused: a bare CR or LF in the message is refused (SMTP smuggling
// relies on them) and nothing is delivered.
func TestBareLineEndingsRefused(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"bare LF": "Subject: x\r\n\r\nsmuggled\n.\nMAIL FROM:<evil@example.com>\r\n",
		"bare CR": "Subject: x\r\n\r\nsmuggled\r.\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := testpeers.StartSink(t)
			p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{})
			ctx := ctxFor(t)
			tx := p.Begin(ctx, "a@example.com", nil)
			if err := tx.Rcpt(ctx, "r@example.net", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Data(ctx, strings.NewReader(body)); !errors.Is(err, upstream.ErrBareLineEnding) {
				t.Fatalf("Data = %v, want ErrBareLineEnding", err)
			}
			tx.Close()
			if c := s.WaitSessions(t, 1); c.Messages != 0 || !testpeers.Eventually(func() bool { return len(s.Messages(t)) == 0 }) {
				t.Fatalf("upstream received a message (counters %+v)", c)
			}
		})
	}
}

// TestLargeMessageStreams sends a message much larger than any buffer, with dot-led
// lines, and checks it arrives intact.
func TestLargeMessageStreams(t *testing.T) {
	t.Parallel()
	srv := testpeers.StartServer(t, testpeers.ServerOptions{})
	p := newPool(t, testUpstream(t, config.TLSNone, srv.Addr), upstream.Options{})
	ctx := ctxFor(t)
	var body bytes.Buffer
	body.WriteString("Subject: big\r\n\r\n")
	for body.Len() < 8<<20 {
		body.WriteString(".a line that starts with a dot\r\n..two dots\r\n.\r\nplain line\r\n")
	}
	tx := p.Begin(ctx, "a@example.com", nil)
	defer tx.Close()
	if err := tx.Rcpt(ctx, "r@example.net", nil); err != nil {
		t.Fatal(err)
	}
	reply, err := tx.Data(ctx, bytes.NewReader(body.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if reply == "" {
		t.Error("empty reply")
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, body.Bytes()) {
		t.Fatalf("message did not arrive intact")
	}
}

// TestTransactionMisuse: Data without an accepted recipient, calls after Close and
// invalid addresses fail cleanly.
func TestTransactionMisuse(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t, "-f", "RCPT")
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{})
	ctx := ctxFor(t)
	tx := p.Begin(ctx, "a@example.com", nil)
	if err := tx.Rcpt(ctx, "r@example.net", nil); err == nil {
		t.Fatal("Rcpt accepted by a sink that refuses RCPT")
	}
	if err := tx.Rcpt(ctx, "bad\r\nRSET", nil); err == nil {
		t.Fatal("an address with CRLF was accepted")
	}
	if _, err := tx.Data(ctx, strings.NewReader("x\r\n")); !errors.Is(err, upstream.ErrNoRecipients) {
		t.Fatalf("Data without recipients = %v", err)
	}
	tx.Close()
	tx.Close()
	if err := tx.Rcpt(ctx, "r@example.net", nil); !errors.Is(err, upstream.ErrTxDone) {
		t.Fatalf("Rcpt after Close = %v", err)
	}
	if st := p.Stats(); st.InUse != 0 {
		t.Fatalf("stats %+v after Close", st)
	}
	bad := p.Begin(ctx, "a@example.com>\r\nRSET", nil)
	defer bad.Close()
	if err := bad.Rcpt(ctx, "r@example.net", nil); err == nil {
		t.Fatal("a sender with CRLF was accepted")
	}
}

// TestLogsNeverShowPassword logs at every level through a failed login and a failover.
func TestLogsNeverShowPassword(t *testing.T) {
	t.Parallel()
	const pass = "Very-Secret-42"
	srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Users: map[string]string{"relay": "other"}})
	var mu sync.Mutex
	var logs strings.Builder
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logs.WriteString(prefix + args + "\n")
	}, funcr.Options{Verbosity: 10})
	u := testUpstream(t, config.TLSStartTLS, srv.Addr, srv.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "PLAIN"}
	p := upstream.New(u, srv.CA.Pool, &config.Credentials{Username: "relay", Password: pass}, upstream.Options{Log: log})
	defer p.Close()
	o := send(ctxFor(t), p, "log", "r@example.net")
	if o.err == nil || strings.Contains(o.err.Error(), pass) {
		t.Fatalf("want an AUTH failure not showing the password: %s", describe(o))
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "cannot take the message") {
		t.Fatalf("failover not logged:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), pass) {
		t.Fatalf("logs show the password:\n%s", logs.String())
	}
}
