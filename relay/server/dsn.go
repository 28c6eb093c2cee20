package server

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/kuberelay/kuberelay/relay/queue"
)

// maxReturnedHeaders bounds the original header section returned in a notification.
const maxReturnedHeaders = 64 << 10

var enhancedRE = regexp.MustCompile(`\b([245])\.(\d{1,3})\.(\d{1,3})\b`)

// dsn is the delivery status notification (RFC 3464) that tells the sender of env
// which recipients failed and why, with the original message's header section
// attached (text/rfc822-headers, RFC 6522). It goes from the null sender, so a
// notification that fails is not answered with another (RFC 5321 section 4.5.5).
func dsn(hostname string, env queue.Envelope, headers []byte, now time.Time) []byte {
	var b bytes.Buffer
	boundary := "dsn-" + randomHex(12)
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	line("From: Mail Delivery System <MAILER-DAEMON@%s>", hostname)
	line("To: <%s>", env.From)
	line("Subject: Undelivered Mail Returned to Sender")
	line("Date: %s", now.UTC().Format(time.RFC1123Z))
	line("Message-ID: <%s@%s>", randomHex(16), hostname)
	line("Auto-Submitted: auto-replied")
	line("MIME-Version: 1.0")
	line(`Content-Type: multipart/report; report-type=delivery-status; boundary="%s"`, boundary)
	line("")
	line("--%s", boundary)
	line("Content-Type: text/plain; charset=us-ascii")
	line("")
	line("This is the mail relay at %s. The message you sent on %s could not be", hostname, env.Received.UTC().Format(time.RFC1123Z))
	line("delivered to the recipients below; it will not be tried again.")
	line("")
	for _, r := range env.Recipients {
		if r.State == queue.Failed {
			line("  <%s>: %s", r.Address, r.LastReply)
		}
	}
	line("")
	line("--%s", boundary)
	line("Content-Type: message/delivery-status")
	line("")
	line("Reporting-MTA: dns; %s", hostname)
	line("Arrival-Date: %s", env.Received.UTC().Format(time.RFC1123Z))
	for _, r := range env.Recipients {
		if r.State != queue.Failed {
			continue
		}
		line("")
		line("Final-Recipient: rfc822; %s", r.Address)
		line("Action: failed")
		line("Status: %s", failedStatus(r.LastReply))
		if r.LastReply != "" {
			line("Diagnostic-Code: smtp; %s", r.LastReply)
		}
	}
	line("")
	line("--%s", boundary)
	line("Content-Type: text/rfc822-headers")
	line("")
	b.Write(headers)
	line("--%s--", boundary)
	return b.Bytes()
}

// failedStatus is the RFC 3463 status of a failed recipient: the enhanced code the
// upstream gave if it was a permanent one, 5.4.7 (delivery time expired) when the
// message grew too old, else 5.0.0.
func failedStatus(reply string) string {
	if strings.HasPrefix(reply, "Gave up after") {
		return "5.4.7"
	}
	if m := enhancedRE.FindStringSubmatch(reply); m != nil && m[1] == "5" {
		return m[1] + "." + m[2] + "." + m[3]
	}
	return "5.0.0"
}

// headerSection reads the header section of a message (up to the empty line), with
// CRLF line endings, bounded in size.
func headerSection(r io.Reader) ([]byte, error) {
	br := bufio.NewReader(io.LimitReader(r, maxReturnedHeaders))
	var b bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if line == "\r\n" || line == "\n" {
			break
		}
		b.WriteString(line)
		if err == io.EOF {
			if !strings.HasSuffix(line, "\n") {
				b.WriteString("\r\n")
			}
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

func randomHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}
