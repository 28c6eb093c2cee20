package render

import (
	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// upstream renders a resolved Smarthost as the upstream name and adds its files.
func (r *renderer) upstream(name string, src *smarthostSource) config.Upstream {
	u, files := upstreamConfig(name, src)
	u.RateLimits = podRateLimits(src.spec.Limits, 0, r.in.FleetSize)
	for k, v := range files {
		r.files[k] = v
	}
	return u
}

// upstreamConfig maps a Smarthost onto relay.yaml. Unset fields stay unset where the
// relay's defaults are the API's.
func upstreamConfig(name string, src *smarthostSource) (config.Upstream, map[string][]byte) {
	spec := src.spec
	files := map[string][]byte{}
	u := config.Upstream{
		Name: name,
		TLS: config.UpstreamTLS{
			Mode:               tlsMode(spec.TLS.Mode),
			ServerName:         spec.TLS.ServerName,
			InsecureSkipVerify: spec.TLS.InsecureSkipVerify,
		},
		MaxConnections:           int(spec.MaxConnections),
		MaxMessagesPerConnection: int(spec.MaxMessagesPerConnection),
	}
	for _, e := range spec.Endpoints {
		u.Endpoints = append(u.Endpoints, config.Endpoint{Host: e.Host, Port: int(e.Port)})
	}
	if src.ca != nil {
		u.TLS.CAFile = secretFileName("upstream", name, "ca.crt")
		files[u.TLS.CAFile] = src.ca
	}
	if a := spec.Auth; a != nil {
		u.Auth = &config.UpstreamAuth{
			Mechanism:    a.Mechanism,
			UsernameFile: secretFileName("upstream", name, "username"),
		}
		files[u.Auth.UsernameFile] = src.username
		if o := a.OAuth2; o != nil {
			u.Auth.OAuth2 = &config.OAuth2{TokenURL: o.TokenURL, Scopes: o.Scopes}
			switch {
			case src.serviceAccount != nil:
				u.Auth.OAuth2.ServiceAccountFile = secretFileName("upstream", name, "service-account.json")
				files[u.Auth.OAuth2.ServiceAccountFile] = src.serviceAccount
			case src.clientCert != nil:
				u.Auth.OAuth2.ClientIDFile = secretFileName("upstream", name, "client-id")
				files[u.Auth.OAuth2.ClientIDFile] = src.clientID
				u.Auth.OAuth2.ClientCertificateFile = secretFileName("upstream", name, "client.crt")
				u.Auth.OAuth2.ClientKeyFile = secretFileName("upstream", name, "client.key")
				files[u.Auth.OAuth2.ClientCertificateFile] = src.clientCert
				files[u.Auth.OAuth2.ClientKeyFile] = src.clientKey
			default:
				u.Auth.OAuth2.ClientIDFile = secretFileName("upstream", name, "client-id")
				files[u.Auth.OAuth2.ClientIDFile] = src.clientID
				u.Auth.OAuth2.ClientSecretFile = secretFileName("upstream", name, "client-secret")
				files[u.Auth.OAuth2.ClientSecretFile] = src.clientSecret
			}
		} else {
			u.Auth.PasswordFile = secretFileName("upstream", name, "password")
			files[u.Auth.PasswordFile] = src.password
		}
	}
	t := relayv1alpha1.SmarthostTimeouts{}
	if spec.Timeouts != nil {
		t = *spec.Timeouts
	}
	u.Timeouts = config.UpstreamTimeouts{
		Connect: duration(t.Connect),
		Command: duration(t.Command),
		Data:    duration(t.Data),
		Idle:    duration(t.Idle),
	}
	return u, files
}
