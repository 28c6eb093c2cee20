// Command floor is the reference point of hack/bench-relay: the least a Go program can do
// to relay SMTP with the same wire pattern as the relay (client replies written one by
// one, upstream MAIL FROM pipelined with the first RCPT TO, DATA, then the body and its
// dot in one write). It has no SMTP library, no checks, no policy, no logs, no metrics
// and one upstream connection per client connection; it passes the body through as it
// came, still dot-stuffed. It is not a relay: only the benchmark uses it.
//
//	floor LISTEN_ADDR UPSTREAM_ADDR
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: floor LISTEN_ADDR UPSTREAM_ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			if err := serve(c, os.Args[2]); err != nil && err != io.EOF {
				fmt.Fprintln(os.Stderr, "floor:", err)
			}
		}()
	}
}

// reply reads one (possibly multiline) SMTP reply and returns its last line.
func reply(r *bufio.Reader) (string, error) {
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(l) < 4 || l[3] != '-' {
			return l, nil
		}
	}
}

func serve(c net.Conn, upstream string) error {
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return err
	}
	defer u.Close()
	ur := bufio.NewReader(u)
	if _, err := reply(ur); err != nil {
		return err
	}
	if _, err := io.WriteString(u, "EHLO floor\r\n"); err != nil {
		return err
	}
	if _, err := reply(ur); err != nil {
		return err
	}
	cr := bufio.NewReaderSize(c, 32<<10)
	if _, err := io.WriteString(c, "220 floor ESMTP\r\n"); err != nil {
		return err
	}
	var mail string // MAIL FROM, held until the first RCPT TO
	body := make([]byte, 0, 64<<10)
	for {
		line, err := cr.ReadString('\n')
		if err != nil {
			return err
		}
		verb := strings.ToUpper(strings.TrimSpace(line))
		if len(verb) > 4 {
			verb = verb[:4]
		}
		var out string
		switch verb {
		case "MAIL":
			mail, out = line, "250 2.1.0 Ok\r\n"
		case "RCPT":
			if _, err := io.WriteString(u, mail+line); err != nil {
				return err
			}
			if mail != "" {
				if _, err := reply(ur); err != nil {
					return err
				}
				mail = ""
			}
			if out, err = reply(ur); err != nil {
				return err
			}
		case "DATA":
			if _, err := io.WriteString(u, "DATA\r\n"); err != nil {
				return err
			}
			if _, err := reply(ur); err != nil {
				return err
			}
			if _, err := io.WriteString(c, "354 End data with <CR><LF>.<CR><LF>\r\n"); err != nil {
				return err
			}
			body = body[:0]
			for !bytes.HasSuffix(body, []byte("\r\n.\r\n")) {
				chunk, err := cr.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					return err
				}
				body = append(body, chunk...)
			}
			if _, err := u.Write(body); err != nil {
				return err
			}
			if out, err = reply(ur); err != nil {
				return err
			}
		case "QUIT":
			_, err := io.WriteString(c, "221 2.0.0 Bye\r\n")
			return err
		default: // EHLO, HELO, RSET, NOOP
			out = "250 floor\r\n"
		}
		if _, err := io.WriteString(c, out); err != nil {
			return err
		}
	}
}
