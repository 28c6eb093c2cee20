package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// TestCaptureUIInBrowser drives the capture UI in Debian's headless chromium: mail
// sent with Python's smtplib is listed, opens with its text, HTML (in a sandboxed
// frame) and headers, downloads as .eml, and is deleted one at a time and all at
// once. A screenshot of an open message is written to $KUBERELAY_CAPTURE_SCREENSHOT
// (a file), or into the test's temporary directory.
func TestCaptureUIInBrowser(t *testing.T) {
	chromium := testpeers.RequireCommand(t, "chromium", "chromium")
	py := testpeers.RequireCommand(t, "python3", "python3")
	e := startRelay(t, baseConfig("127.0.0.1:1", "capture: {all: true}\n"), testSecrets(t, "one"))
	hs := httptest.NewServer(e.srv.CaptureHandler("relay-test-0"))
	defer hs.Close()

	host, port, _ := strings.Cut(e.addr("plain"), ":")
	script := fmt.Sprintf(`
from email.message import EmailMessage
import smtplib
with smtplib.SMTP(%q, %s, timeout=10) as s:
    for i, subject in enumerate(["Your invoice 1001", "Welcome to staging"]):
        m = EmailMessage()
        m["From"] = "noreply@example.com"; m["To"] = "dev%%d@example.net" %% i; m["Subject"] = subject
        m.set_content("Hello,\n\nthis is the text part of %%s.\n" %% subject)
        m.add_alternative("<h1 style='color:#3056d3'>Hello</h1><p>the <b>HTML</b> part</p><script>parent.document.title='pwned'</script>", subtype="html")
        m.add_attachment(b"%%PDF-1.4 not really", maintype="application", subtype="pdf", filename="invoice.pdf")
        s.send_message(m)
`, host, port)
	if out, err := exec.Command(py, "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 800))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(ctx)
	defer cancelBrowser()
	// "Delete all" asks first: the test says yes.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	attr := func(sel, name string) chromedp.AttributeResult {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(sel), name))
		if err != nil {
			t.Fatalf("%s of %s: %v", name, sel, err)
		}
		return v
	}

	do("open the UI and wait for the list", chromedp.Navigate(hs.URL+"/capture/"), chromedp.WaitVisible(chromedp.CSS(`#list tbody tr:nth-child(2)`)))
	list, stats := text(`#list tbody`), text(`#stats`)
	if !strings.Contains(list, "Your invoice 1001") || !strings.Contains(list, "Welcome to staging") || !strings.Contains(stats, "relay-test-0: 2 of at most 1000 messages") {
		t.Fatalf("list %q, stats %q", list, stats)
	}
	if strings.Index(list, "Welcome to staging") > strings.Index(list, "Your invoice 1001") {
		t.Fatalf("list not newest first: %q", list)
	}
	do("open the older message", chromedp.Click(chromedp.CSS(`#list tbody tr:nth-child(2)`)), chromedp.WaitVisible(chromedp.CSS(`#view`)))
	subject, body, attachments := text(`#view-subject`), text(`#tab-text`), text(`#attachments`)
	if subject != "Your invoice 1001" || !strings.Contains(body, "this is the text part of Your invoice 1001.") ||
		!strings.Contains(attachments, "invoice.pdf") || !strings.Contains(attachments, "application/pdf") {
		t.Fatalf("view: subject %q, text %q, attachments %q", subject, body, attachments)
	}
	if sb := attr(`#tab-html`, "sandbox"); !sb.Exists || sb.Value != "" {
		t.Fatalf("the HTML frame's sandbox attribute: %+v, want present and empty (no scripts, no same origin)", sb)
	}
	download := attr(`#download`, "href").Value
	do("the HTML tab", chromedp.Click(chromedp.CSS(`button[data-tab=html]`)), chromedp.WaitVisible(chromedp.CSS(`#tab-html`)))
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	do("the headers tab", chromedp.Click(chromedp.CSS(`button[data-tab=headers]`)), chromedp.WaitVisible(chromedp.CSS(`#tab-headers`)))
	headers := text(`#tab-headers`)
	title, _ := chromedp.Run(ctx, chromedp.Title())
	if !strings.Contains(headers, "Received") || !strings.Contains(headers, "Content-Type") || title != "kuberelay capture" {
		t.Fatalf("headers %q, title %q", headers, title)
	}
	shot := os.Getenv("KUBERELAY_CAPTURE_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "capture-ui.png")
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of an open message: %s (%d bytes)", shot, len(png))

	resp, err := http.Get(hs.URL + "/capture/" + download)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "message/rfc822" {
		t.Fatalf("Download .eml (%s): %d %s", download, resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	do("delete the open message", chromedp.Click(chromedp.CSS(`#delete`)), chromedp.WaitNotPresent(chromedp.CSS(`#list tbody tr:nth-child(2)`)))
	if list = text(`#list tbody`); strings.Contains(list, "Your invoice 1001") || !strings.Contains(list, "Welcome to staging") {
		t.Fatalf("after deleting one: %q", list)
	}
	do("delete all", chromedp.Click(chromedp.CSS(`#delete-all`)), chromedp.WaitVisible(chromedp.CSS(`#empty`)))
	api := &captureAPI{t: t, url: hs.URL + "/capture/api/messages"}
	if n := len(api.list("").Items); n != 0 {
		t.Fatalf("%d messages left after Delete all", n)
	}
}
