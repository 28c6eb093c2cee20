package main

import (
	"net"

	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
)

var captureCAPEM []byte

func (e *e2e) captureCA() []byte { return captureCAPEM }

// startCapture starts the capture smarthost with STARTTLS, its certificate issued
// for the node IP by a CA of its own (captureCAPEM).
func startCapture(addr string) (*mailcapture.Server, error) {
	ca, err := testcerts.NewCA("kuberelay e2e capture CA")
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	cfg, err := ca.ServerTLS(host)
	if err != nil {
		return nil, err
	}
	captureCAPEM = ca.PEM
	return mailcapture.Start(addr, mailcapture.Options{TLS: cfg, Auth: true})
}
