package render

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// smarthost resolves a Smarthost and the Secrets it references, once per render.
// field is the reference's field in the referring object, for messages.
func (r *renderer) smarthost(key types.NamespacedName, field string) (*smarthostSource, *Error) {
	sh := r.in.Smarthosts[key]
	if sh == nil {
		return nil, &Error{Reason: relayv1alpha1.ReasonSmarthostNotFound, Message: fmt.Sprintf(
			"Smarthost %s (%s) not found: create it or point %s at an existing Smarthost in namespace %s", key, field, field, key.Namespace)}
	}
	if src, ok := r.smarthosts[key]; ok {
		return src, copyErr(src.err)
	}
	src := &smarthostSource{key: key, spec: &sh.Spec}
	src.err = r.resolveSmarthost(src)
	r.smarthosts[key] = src
	return src, copyErr(src.err)
}

func (r *renderer) resolveSmarthost(src *smarthostSource) *Error {
	prefix := fmt.Sprintf("Smarthost %s: ", src.key)
	wrap := func(e *Error) *Error {
		e.Message = prefix + e.Message
		return e
	}
	// From here on the spec is the provider's preset under the user's fields.
	spec, perr := withProvider(src.spec)
	if perr != nil {
		return wrap(perr)
	}
	src.spec = spec
	ns := src.key.Namespace
	if a := spec.Auth; a != nil && a.OAuth2 != nil {
		what := "spec.auth.oauth2.clientSecretRef"
		s, err := r.secret(ns, a.OAuth2.ClientSecretRef.Name, what, "a Secret with keys "+oauthClientIDKey+" and "+oauthClientSecretKey)
		if err != nil {
			return wrap(err)
		}
		if e := oauthClient(src, s, what); e != nil {
			return wrap(e)
		}
		src.username = []byte(a.OAuth2.Username)
	}
	if a := spec.Auth; a != nil && a.SecretRef != nil {
		what := "spec.auth.secretRef"
		s, err := r.secret(ns, a.SecretRef.Name, what, "a Secret of type kubernetes.io/basic-auth")
		if err != nil {
			return wrap(err)
		}
		if src.username, err = secretKey(s, basicAuthUsername, what); err != nil {
			return wrap(err)
		}
		if src.password, err = secretKey(s, basicAuthPassword, what); err != nil {
			return wrap(err)
		}
		for _, k := range []struct {
			key string
			val []byte
		}{{basicAuthUsername, src.username}, {basicAuthPassword, src.password}} {
			if len(trimNewline(k.val)) == 0 {
				return wrap(&Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf("Secret %s/%s (%s): %s is empty", ns, s.Name, what, k.key)})
			}
		}
	}
	if ca := spec.TLS.CASecretRef; ca != nil {
		keyName := ca.Key
		if keyName == "" {
			keyName = defaultCAKey
		}
		what := "spec.tls.caSecretRef"
		b, err := r.secretKeyOf(ns, ca.Name, keyName, what, "a Secret holding PEM CA certificates")
		if err != nil {
			return wrap(err)
		}
		if !hasPEMCertificate(b) {
			return wrap(&Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
				"Secret %s/%s key %s (%s) holds no PEM certificate", ns, ca.Name, keyName, what)})
		}
		src.ca = b
	}
	// The Smarthost's fields, checked by the relay's rules on their own.
	probe, _ := upstreamConfig("probe", src)
	if err := fieldsAt(probe.WithDefaults().Validate(), "spec."); err != nil {
		return &Error{Reason: relayv1alpha1.ReasonSmarthostNotReady, Message: prefix + err.Error()}
	}
	return nil
}

// oauthClient reads a Smarthost's OAuth 2.0 client from its Secret s: a Google
// service account key, or client-id with client-secret or a certificate and key.
func oauthClient(src *smarthostSource, s *corev1.Secret, what string) *Error {
	ns := s.Namespace
	var err *Error
	if sa, ok := s.Data[oauthServiceAccountKey]; ok {
		// A Google service account key: nothing else is read from the Secret.
		parsed, perr := config.ParseServiceAccount(sa)
		if perr == nil && src.spec.Auth.OAuth2.TokenURL == "" {
			perr = config.CheckTokenURL(parsed.TokenURI)
		}
		if perr != nil {
			return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
				"Secret %s/%s (%s) key %s: %v; it must be the service account's JSON key as Google downloads it", ns, s.Name, what, oauthServiceAccountKey, perr)}
		}
		src.serviceAccount = sa
		return nil
	}
	if src.clientID, err = secretKey(s, oauthClientIDKey, what); err != nil {
		return err
	}
	_, hasSecret := s.Data[oauthClientSecretKey]
	_, hasCert := s.Data[corev1.TLSCertKey]
	keys := []struct {
		key string
		val []byte
	}{{oauthClientIDKey, src.clientID}}
	switch {
	case hasSecret && hasCert:
		return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
			"Secret %s/%s (%s) holds both %s and %s: keep the secret or the certificate", ns, s.Name, what, oauthClientSecretKey, corev1.TLSCertKey)}
	case hasCert:
		if src.clientCert, err = secretKey(s, corev1.TLSCertKey, what); err != nil {
			return err
		}
		if src.clientKey, err = secretKey(s, corev1.TLSPrivateKeyKey, what); err != nil {
			return err
		}
		if _, _, perr := config.ParseClientCertificate(src.clientCert, src.clientKey); perr != nil {
			return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
				"Secret %s/%s (%s): %v; it must hold the client's certificate (tls.crt) and its RSA key (tls.key), PEM", ns, s.Name, what, perr)}
		}
	default:
		if src.clientSecret, err = secretKey(s, oauthClientSecretKey, what); err != nil {
			return err
		}
		keys = append(keys, struct {
			key string
			val []byte
		}{oauthClientSecretKey, src.clientSecret})
	}
	for _, k := range keys {
		if len(trimNewline(k.val)) == 0 {
			return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf("Secret %s/%s (%s): %s is empty", ns, s.Name, what, k.key)}
		}
	}
	return nil
}
