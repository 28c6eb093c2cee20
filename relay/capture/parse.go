package capture

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// Limits of what a detail view decodes, so a hostile message costs bounded work.
const (
	maxDepth     = 8
	maxParts     = 100
	maxPartBytes = 4 << 20
)

// Header is one header field as it appears, with its value decoded for display.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Attachment is a part that is neither the text nor the HTML body.
type Attachment struct {
	Filename    string `json:"filename,omitempty"`
	ContentType string `json:"contentType"`
	Size        int    `json:"size"`
}

// Detail is a captured message decoded for reading: its header fields in order, its
// text and HTML bodies and its other parts.
type Detail struct {
	*Message
	Headers     []Header     `json:"headers"`
	Text        string       `json:"text,omitempty"`
	HTML        string       `json:"html,omitempty"`
	Attachments []Attachment `json:"attachments,omitempty"`
	// ParseError says why the message could not be decoded in full; the raw message
	// is still there to download.
	ParseError string `json:"parseError,omitempty"`
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, r io.Reader) (io.Reader, error) {
	// Other charsets are shown as they are, invalid bytes replaced below.
	return r, nil
}}

// decodeHeader decodes RFC 2047 encoded words, keeping the raw value if that fails.
func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		v = d
	}
	return strings.ToValidUTF8(v, "\uFFFD")
}

// Decode parses m for display.
func Decode(m *Message) *Detail {
	d := &Detail{Message: m, Headers: []Header{}}
	data := m.data
	hdrEnd := bytes.Index(data, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		hdrEnd = len(data)
	}
	d.Headers = rawHeaders(data[:hdrEnd])
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		d.ParseError = err.Error()
		return d
	}
	parts := 0
	if err := d.walk(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), "", msg.Body, 0, &parts); err != nil {
		d.ParseError = err.Error()
	}
	return d
}

// rawHeaders lists the header fields in order, unfolded and decoded.
func rawHeaders(b []byte) []Header {
	out := []Header{}
	for _, line := range strings.Split(string(b), "\r\n") {
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1].Value += " " + strings.TrimSpace(line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		out = append(out, Header{Name: strings.ToValidUTF8(name, "\uFFFD"), Value: strings.TrimSpace(value)})
	}
	for i := range out {
		out[i].Value = decodeHeader(out[i].Value)
	}
	return out
}

// walk visits one entity: multiparts by their parts, the first text/plain and
// text/html as the bodies, the rest as attachments.
func (d *Detail) walk(ctype, cte, disposition string, body io.Reader, depth int, parts *int) error {
	*parts++
	if *parts > maxParts || depth > maxDepth {
		return nil
	}
	mediaType, params, err := mime.ParseMediaType(ctype)
	if ctype == "" || err != nil {
		mediaType, params = "text/plain", map[string]string{}
	}
	if strings.HasPrefix(mediaType, "multipart/") && params["boundary"] != "" {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := d.walk(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p.Header.Get("Content-Disposition"), p, depth+1, parts); err != nil {
				return err
			}
		}
	}
	content, err := io.ReadAll(io.LimitReader(decodeTransfer(cte, body), maxPartBytes))
	if err != nil {
		return err
	}
	disp, dparams, _ := mime.ParseMediaType(disposition)
	filename := dparams["filename"]
	if filename == "" {
		filename = params["name"]
	}
	inline := disp != "attachment" && filename == ""
	switch {
	case inline && mediaType == "text/plain" && d.Text == "":
		d.Text = toUTF8(content)
	case inline && mediaType == "text/html" && d.HTML == "":
		d.HTML = toUTF8(content)
	default:
		d.Attachments = append(d.Attachments, Attachment{Filename: decodeHeader(filename), ContentType: mediaType, Size: len(content)})
	}
	return nil
}

func decodeTransfer(cte string, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, newlineSkipper{r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// newlineSkipper drops CR and LF, which base64 bodies carry between lines.
type newlineSkipper struct{ r io.Reader }

func (n newlineSkipper) Read(p []byte) (int, error) {
	for {
		c, err := n.r.Read(p)
		j := 0
		for _, b := range p[:c] {
			if b != '\r' && b != '\n' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

func toUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
