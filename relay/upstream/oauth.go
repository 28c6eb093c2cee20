package upstream

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/jwt"

	"github.com/kuberelay/kuberelay/relay/config"
)

// tokenRefreshMargin is how long before its expiry a token is replaced: a connection
// never authenticates with a token about to lapse, and providers' clocks may run ahead.
const tokenRefreshMargin = 5 * time.Minute

// tokens obtains an upstream's access tokens with the client credentials grant and
// keeps the current one until tokenRefreshMargin before it expires; concurrent
// connections share one request.
type tokens struct {
	cfg    clientcredentials.Config
	client *http.Client
	// cert (DER) and key sign client assertions instead of sending cfg.ClientSecret.
	cert []byte
	key  *rsa.PrivateKey
	// google obtains tokens for a Google service account (the JWT bearer grant).
	google *jwt.Config

	mu      sync.Mutex
	src     oauth2.TokenSource
	last    string    // the token handed out last
	resetAt time.Time // the last reset after a refusal
}

func newTokens(c *config.OAuth2Client, subject string, timeout time.Duration) *tokens {
	t := &tokens{
		cfg: clientcredentials.Config{ClientID: c.ClientID, ClientSecret: c.ClientSecret, TokenURL: c.TokenURL, Scopes: c.Scopes,
			// The form body, as Microsoft and Google document it; never retried as
			// basic auth (which would send the secret twice).
			AuthStyle: oauth2.AuthStyleInParams},
		// A redirect would send the form, secret included, elsewhere: refused.
		client: &http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	if k, ok := c.ClientKey.(*rsa.PrivateKey); ok && c.ClientCertificate != nil {
		t.cert, t.key = c.ClientCertificate, k
	}
	if sa := c.ServiceAccount; sa != nil {
		tokenURL := c.TokenURL
		if tokenURL == "" {
			tokenURL = sa.TokenURI
		}
		// The mailbox is the user the service account acts for (domain-wide delegation).
		t.google = &jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), PrivateKeyID: sa.PrivateKeyID,
			Subject: subject, Scopes: c.Scopes, TokenURL: tokenURL}
		t.cfg.TokenURL = tokenURL
	}
	t.reset()
	return t
}

func (t *tokens) reset() {
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, t.client)
	var src oauth2.TokenSource = t.cfg.TokenSource(ctx)
	switch {
	case t.google != nil:
		src = t.google.TokenSource(ctx)
	case t.key != nil:
		src = &assertionSource{t: t, ctx: ctx}
	}
	t.mu.Lock()
	t.src = oauth2.ReuseTokenSourceWithExpiry(nil, src, tokenRefreshMargin)
	t.mu.Unlock()
}

// assertionSource requests tokens with a client assertion signed by the client's
// certificate key (RFC 7523 section 2.2, as Microsoft Entra ID takes it) instead of a
// secret; each request gets a fresh assertion.
type assertionSource struct {
	t   *tokens
	ctx context.Context
}

// clientAssertionLifetime bounds an assertion's validity: it is used at once.
const clientAssertionLifetime = 5 * time.Minute

func (a *assertionSource) Token() (*oauth2.Token, error) {
	jwt, err := a.t.assertion(time.Now())
	if err != nil {
		return nil, err
	}
	cfg := a.t.cfg
	cfg.EndpointParams = url.Values{
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {jwt},
	}
	return cfg.Token(a.ctx)
}

// assertion is a JWT signed RS256 by the client's key: issuer and subject the client
// id, audience the token endpoint, and the certificate's SHA-1 thumbprint (x5t) and
// SHA-256 thumbprint (x5t#S256) naming the key.
func (t *tokens) assertion(now time.Time) (string, error) {
	sha1sum := sha1.Sum(t.cert)
	sha256sum := sha256.Sum256(t.cert)
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT",
		"x5t": base64.RawURLEncoding.EncodeToString(sha1sum[:]), "x5t#S256": base64.RawURLEncoding.EncodeToString(sha256sum[:])})
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	claims, _ := json.Marshal(map[string]any{"aud": t.cfg.TokenURL, "iss": t.cfg.ClientID, "sub": t.cfg.ClientID,
		"jti": hex.EncodeToString(jti), "nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(clientAssertionLifetime).Unix()})
	signing := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, t.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("signing the client assertion: %w", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// token returns a valid access token, requesting one when there is none.
func (t *tokens) token() (string, error) {
	t.mu.Lock()
	src := t.src
	t.mu.Unlock()
	tok, err := src.Token()
	if err != nil {
		return "", tokenError(t.cfg.TokenURL, err)
	}
	t.mu.Lock()
	t.last = tok.AccessToken
	t.mu.Unlock()
	return tok.AccessToken, nil
}

// refused forgets token after the upstream refused it (revoked, or expired early):
// the next connection asks for a new one.
func (t *tokens) refused(token string) {
	t.mu.Lock()
	current := t.last == token && time.Since(t.resetAt) >= tokenResetGap
	if current {
		t.resetAt = time.Now()
	}
	t.mu.Unlock()
	if current {
		t.reset()
	}
}

// tokenResetGap bounds how often refusals make the relay ask for a new token, so an
// upstream that refuses every login for another reason (SMTP AUTH disabled for the
// mailbox) does not make it hammer the token endpoint.
const tokenResetGap = time.Minute

// tokenError describes a failed token request by the endpoint's host and its OAuth
// error code, never by what was sent.
func tokenError(tokenURL string, err error) error {
	host := tokenURL
	if u, perr := url.Parse(tokenURL); perr == nil {
		host = u.Host
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		msg := "token endpoint " + host + " answered"
		if re.Response != nil {
			msg += " " + strconv.Itoa(re.Response.StatusCode)
		}
		if re.ErrorCode != "" {
			msg += " " + sanitize(re.ErrorCode)
		}
		if d := re.ErrorDescription; d != "" {
			if len(d) > 200 {
				d = d[:200]
			}
			msg += ": " + sanitize(d)
		}
		return errors.New(msg)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// The URL is known; the transport's reason is what tells.
		return fmt.Errorf("token endpoint %s: %v", host, ue.Err)
	}
	return fmt.Errorf("token endpoint %s: %v", host, err)
}

// xoauth2Client is the XOAUTH2 mechanism as Google and Microsoft document it: the
// initial response "user=" user "^Aauth=Bearer " token "^A^A"; a failure comes as a
// challenge holding a JSON error, answered with an empty response, after which the
// server replies 535.
type xoauth2Client struct{ user, token string }

func (c *xoauth2Client) Start() (string, []byte, error) {
	return config.MechanismXOAuth2, []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// oauthBearerClient is RFC 7628's OAUTHBEARER (go-sasl's), answering an error
// challenge with the %x01 the RFC asks for (section 3.2.3) rather than cancelling.
type oauthBearerClient struct{ sasl.Client }

func (c oauthBearerClient) Next([]byte) ([]byte, error) { return []byte{1}, nil }

func newOAuthClient(mech, user, token, host string, port int) sasl.Client {
	if strings.EqualFold(mech, config.MechanismOAuthBearer) {
		return oauthBearerClient{sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: user, Token: token, Host: host, Port: port})}
	}
	return &xoauth2Client{user: user, token: token}
}
