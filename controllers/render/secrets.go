package render

import (
	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"

	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// secret looks up a Secret; what names the reference and kind describes the expected
// Secret, for the message.
func (r *renderer) secret(ns, name, what, kind string) (*corev1.Secret, *Error) {
	s := r.in.Secrets[types.NamespacedName{Namespace: ns, Name: name}]
	if s == nil {
		return nil, &Error{Reason: relayv1alpha1.ReasonSecretNotFound, Message: fmt.Sprintf(
			"Secret %s/%s (%s) not found: create %s named %s in namespace %s", ns, name, what, kind, name, ns)}
	}
	return s, nil
}

// secretKeyOf looks up one key of a Secret.
func (r *renderer) secretKeyOf(ns, name, key, what, kind string) ([]byte, *Error) {
	s, err := r.secret(ns, name, what, kind)
	if err != nil {
		return nil, err
	}
	return secretKey(s, key, what)
}

func secretKey(s *corev1.Secret, key, what string) ([]byte, *Error) {
	b, ok := s.Data[key]
	if !ok {
		return nil, &Error{Reason: relayv1alpha1.ReasonSecretKeyMissing, Message: fmt.Sprintf(
			"Secret %s/%s (%s) has no key %q: add it", s.Namespace, s.Name, what, key)}
	}
	return b, nil
}
