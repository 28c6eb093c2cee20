package render

import (
	"fmt"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// capture renders spec.capture: its cap, and whether all mail is captured. Domains
// and clients are marked by capturedNamespace and clientCaptured.
func (r *renderer) capture(cfg *config.Config) error {
	c := r.relay.Spec.Capture
	if c == nil {
		return nil
	}
	cfg.Capture = &config.Capture{All: c.NamespaceSelector == nil}
	if c.MaxMessages != nil {
		cfg.Capture.MaxMessages = int(*c.MaxMessages)
	}
	if c.MaxSize != nil {
		if c.MaxSize.Sign() <= 0 {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf(
				"spec.capture.maxSize %s must be positive (default 32Mi)", c.MaxSize.String())}
		}
		cfg.Capture.MaxBytes = c.MaxSize.Value()
	}
	return nil
}

// capturedNamespace says whether spec.capture selects the namespace ns (the caller
// lists the selected ones in Inputs.CaptureNamespaces).
func (r *renderer) capturedNamespace(ns string) bool {
	return r.relay.Spec.Capture != nil && r.in.CaptureNamespaces[ns]
}

// ClientCaptured says whether the relay captures a client's mail instead of sending
// it; captureNamespaces are the namespaces the relay's spec.capture selects.
func ClientCaptured(relay *relayv1alpha1.SmtpRelay, c *relayv1alpha1.RelayClient, captureNamespaces map[string]bool) bool {
	cp := relay.Spec.Capture
	return c.Spec.Capture || cp != nil && (cp.NamespaceSelector == nil || captureNamespaces[c.Namespace])
}
