package render

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// users reads the clients' credentials and hashes their passwords.
func (r *renderer) users(cfg *config.Config) error {
	auth := r.relay.Spec.Auth
	if auth == nil {
		return nil
	}
	byName := map[string]string{}
	for i, u := range auth.Users {
		what := fmt.Sprintf("spec.auth.users[%d].secretRef of SmtpRelay %s", i, r.relayKey)
		s, err := r.secret(r.relay.Namespace, u.SecretRef.Name, what, "a Secret of type kubernetes.io/basic-auth")
		if err != nil {
			return err
		}
		rawUser, err := secretKey(s, basicAuthUsername, what)
		if err != nil {
			return err
		}
		rawPass, err := secretKey(s, basicAuthPassword, what)
		if err != nil {
			return err
		}
		// A trailing newline (echo, an editor) is not part of the credential, as for
		// the smarthost credentials the relay reads.
		username := string(trimNewline(rawUser))
		password := trimNewline(rawPass)
		invalid := func(format string, args ...any) *Error {
			return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf("Secret %s/%s (%s): ", s.Namespace, s.Name, what) + fmt.Sprintf(format, args...)}
		}
		switch {
		case username == "":
			return invalid("%s is empty", basicAuthUsername)
		case strings.ContainsAny(username, "\x00\r\n"):
			return invalid("%s may not contain NUL, CR or LF", basicAuthUsername)
		case len(password) == 0:
			return invalid("%s is empty", basicAuthPassword)
		case len(password) > maxPasswordBytes:
			return invalid("%s is longer than %d bytes, which bcrypt cannot hash: use a shorter password", basicAuthPassword, maxPasswordBytes)
		}
		if other, ok := byName[username]; ok {
			return invalid("user name %q is also the user name in Secret %s/%s: each user needs a distinct user name", username, s.Namespace, other)
		}
		byName[username] = s.Name
		r.usernames[username] = s.Name

		if r.in.Hasher == nil {
			return errors.New("render: Inputs.Hasher is nil but the relay has users")
		}
		file := secretFileName("user", s.Name, "bcrypt")
		hash, herr := r.in.Hasher.Hash(hasherKey(r.relayKey, s.Name), password, r.in.Previous[file])
		if herr != nil {
			return fmt.Errorf("hashing the password in Secret %s/%s: %w", s.Namespace, s.Name, herr)
		}
		user := config.User{Username: username, PasswordHashFile: file, AllowedSenders: sortedSet(u.AllowedSenders)}
		if err := fieldsAt(user.Validate(), fmt.Sprintf("spec.auth.users[%d].", i)); err != nil {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf("SmtpRelay %s: %v", r.relayKey, err)}
		}
		cfg.Users = append(cfg.Users, user)
		r.files[file] = hash
	}
	sort.Slice(cfg.Users, func(i, j int) bool { return cfg.Users[i].Username < cfg.Users[j].Username })
	return nil
}
