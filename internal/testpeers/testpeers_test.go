package testpeers_test

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

func TestRequireCommandFindsSbin(t *testing.T) {
	// smtp-sink lives in /usr/sbin, which is not on every PATH.
	if p := testpeers.RequireCommand(t, "smtp-sink", "postfix"); !strings.HasSuffix(p, "/smtp-sink") {
		t.Fatalf("RequireCommand = %q", p)
	}
}

func TestRequireCommandFailsWithInstallHint(t *testing.T) {
	ft := &fakeT{TB: t}
	func() {
		defer func() { recover() }()
		testpeers.RequireCommand(ft, "no-such-program-kuberelay", "some-package")
	}()
	if !strings.Contains(ft.msg, `install the Debian package "some-package"`) {
		t.Fatalf("message %q does not say what to install", ft.msg)
	}
}

// fakeT records Fatalf instead of ending the test.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}

func TestSinkDumpsMessages(t *testing.T) {
	s := testpeers.StartSink(t)
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	body := "Subject: hi\r\n\r\n..dot line\r\nend\r\n"
	if err := c.SendMail("a@example.com", []string{"b@example.net", "c@example.net"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages(t)
	if len(msgs) != 1 {
		t.Fatalf("got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Helo != "client.test" || !strings.HasPrefix(m.MailFrom, "<a@example.com>") || len(m.RcptTo) != 2 {
		t.Fatalf("envelope = %+v", m)
	}
	if want := "Subject: hi\n\n..dot line\nend\n"; m.Content != want {
		t.Fatalf("content = %q, want %q", m.Content, want)
	}
	if got := s.WaitSessions(t, 1); got.Messages != 1 || got.Quits != 1 {
		t.Fatalf("counters = %+v", got)
	}
}

func TestServerStartTLSAndAuth(t *testing.T) {
	s := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Users: map[string]string{"u": "p"}})
	c, err := smtp.DialStartTLS(s.Addr, &tls.Config{RootCAs: s.CA.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient("u", "p")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("a@example.com", []string{"b@example.net"}, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || !msgs[0].TLS || msgs[0].User != "u" || string(msgs[0].Data) != "Subject: x\r\n\r\nbody\r\n" {
		t.Fatalf("messages = %+v", msgs)
	}
}

func TestRequireSwaksTLS(t *testing.T) {
	if p := testpeers.RequireSwaksTLS(t); !strings.HasSuffix(p, "/swaks") {
		t.Fatalf("RequireSwaksTLS = %q", p)
	}
}

// TestSwaksWithoutTLSNamesPackage runs the real swaks with its TLS module hidden, as on
// a machine where swaks was installed without its recommends.
func TestSwaksWithoutTLSNamesPackage(t *testing.T) {
	swaks := testpeers.RequireCommand(t, "swaks", "swaks")
	hide := filepath.Join(t.TempDir(), "Net")
	if err := os.MkdirAll(hide, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hide, "SSLeay.pm"), []byte("die qq(hidden by the test\\n);\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(swaks, "--support")
	cmd.Env = append(os.Environ(), "PERL5LIB="+filepath.Dir(hide))
	err := testpeers.SwaksTLS(cmd)
	if err == nil || !strings.Contains(err.Error(), `install the Debian package "libnet-ssleay-perl"`) ||
		!strings.Contains(err.Error(), "requires Net::SSLeay") {
		t.Fatalf("SwaksTLS without Net::SSLeay = %v; want the package to install and swaks's reason", err)
	}
}
