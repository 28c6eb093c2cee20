package render

import (
	"fmt"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// Providers' endpoints and limits, as each documents them (docs/smarthosts.md).
const (
	sesHostFormat       = "email-smtp.%s.amazonaws.com"
	sendGridHost        = "smtp.sendgrid.net"
	mailgunHost         = "smtp.mailgun.org"
	mailgunEUHost       = "smtp.eu.mailgun.org"
	microsoft365Host    = "smtp.office365.com"
	googleWorkspaceHost = "smtp.gmail.com"
	postmarkHost        = "smtp.postmarkapp.com"

	microsoft365TokenURLFormat = "https://login.microsoftonline.com/%s/oauth2/v2.0/token"
	microsoft365Scope          = "https://outlook.office365.com/.default"
	googleMailScope            = "https://mail.google.com/"
)

// withProvider returns spec with what its provider fills in where spec leaves it
// unset; spec itself is not changed. Fields the user set always win.
func withProvider(spec *relayv1alpha1.SmarthostSpec) (*relayv1alpha1.SmarthostSpec, *Error) {
	if spec.Provider == "" {
		return spec, nil
	}
	out := spec.DeepCopy()
	host := ""
	switch spec.Provider {
	case "SES":
		if spec.Region != "" {
			host = fmt.Sprintf(sesHostFormat, spec.Region)
		}
	case "SendGrid":
		host = sendGridHost
	case "Mailgun":
		host = mailgunHost
		if spec.Region == "eu" {
			host = mailgunEUHost
		}
	case "Microsoft365":
		host = microsoft365Host
		if a := out.Auth; a != nil && a.OAuth2 != nil {
			if a.OAuth2.TokenURL == "" && a.OAuth2.TenantID != "" {
				a.OAuth2.TokenURL = fmt.Sprintf(microsoft365TokenURLFormat, a.OAuth2.TenantID)
			}
			if len(a.OAuth2.Scopes) == 0 {
				a.OAuth2.Scopes = []string{microsoft365Scope}
			}
		}
		// Exchange Online's sending limits per mailbox: 30 messages a minute and
		// 10,000 recipients a day.
		if out.Limits == nil {
			out.Limits = &relayv1alpha1.RateLimits{MessagesPerMinute: 30, RecipientsPerDay: 10000}
		}
	case "GoogleWorkspace":
		host = googleWorkspaceHost
		if a := out.Auth; a != nil && a.OAuth2 != nil && len(a.OAuth2.Scopes) == 0 {
			a.OAuth2.Scopes = []string{googleMailScope}
		}
		// Google Workspace's daily limit per user for mail sent by SMTP.
		if out.Limits == nil {
			out.Limits = &relayv1alpha1.RateLimits{MessagesPerDay: 2000}
		}
	case "Postmark":
		host = postmarkHost
	default:
		return nil, &Error{Reason: relayv1alpha1.ReasonSmarthostNotReady, Message: fmt.Sprintf(
			"spec.provider %q is not one of SES, SendGrid, Mailgun, Microsoft365, GoogleWorkspace, Postmark", spec.Provider)}
	}
	if len(out.Endpoints) == 0 {
		if host == "" {
			return nil, &Error{Reason: relayv1alpha1.ReasonSmarthostNotReady, Message: "spec.region is required with provider " + spec.Provider + " (or set spec.endpoints)"}
		}
		// Submission with STARTTLS, which every one of them offers.
		out.Endpoints = []relayv1alpha1.SmarthostEndpoint{{Host: host, Port: 587}}
	}
	return out, nil
}
