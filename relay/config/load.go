package config

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"golang.org/x/crypto/bcrypt"
)

// Loaded is a validated configuration together with the parsed contents of every
// secret file it references. A Loaded value is immutable once returned.
type Loaded struct {
	Config *Config
	// Hash identifies this exact configuration and secret content; see Hash.
	Hash string

	// Certificate is the listeners' certificate, nil when no listener uses TLS.
	Certificate *tls.Certificate
	// PasswordHashes maps a username to its bcrypt hash, then the previous
	// password's if it has one.
	PasswordHashes map[string][][]byte
	// DKIMKeys maps a sender domain to its signing key.
	DKIMKeys map[string]crypto.Signer
	// UpstreamCAs maps an upstream name to the CA pool its caFile holds.
	UpstreamCAs map[string]*x509.CertPool
	// UpstreamCredentials maps an upstream name to the credentials it authenticates with.
	UpstreamCredentials map[string]Credentials
}

// Credentials are a user name and a password, or an OAuth 2.0 client, read from
// secret files.
type Credentials struct {
	Username string
	Password string
	OAuth2   *OAuth2Client
}

// OAuth2Client is an OAuth 2.0 client's endpoint and credentials.
type OAuth2Client struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	// ClientCertificate (DER) and ClientKey (its RSA key) sign client
	// assertions instead of a secret.
	ClientCertificate []byte
	ClientKey         crypto.Signer
	// ServiceAccount is a Google service account key, instead of the above.
	ServiceAccount *ServiceAccount
	Scopes         []string
}

// ServiceAccount is what the relay uses of a Google service account's JSON key.
type ServiceAccount struct {
	ClientEmail  string `json:"client_email"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	TokenURI     string `json:"token_uri"`
}

// ParseServiceAccount reads a Google service account JSON key and checks its key.
func ParseServiceAccount(b []byte) (*ServiceAccount, error) {
	var sa ServiceAccount
	if err := json.Unmarshal(b, &sa); err != nil {
		return nil, fmt.Errorf("not a service account JSON key: %w", err)
	}
	if sa.ClientEmail == "" || sa.PrivateKey == "" {
		return nil, errors.New("the service account key has no client_email or private_key")
	}
	key, err := ParsePrivateKey([]byte(sa.PrivateKey))
	if err != nil {
		return nil, fmt.Errorf("the service account's private_key: %w", err)
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return nil, errors.New("the service account's private_key must be RSA")
	}
	if sa.TokenURI == "" {
		sa.TokenURI = "https://oauth2.googleapis.com/token"
	}
	return &sa, nil
}

// String never shows the client secret.
func (o OAuth2Client) String() string {
	return fmt.Sprintf("{TokenURL:%s ClientID:%s ClientSecret:<redacted> Scopes:%v}", o.TokenURL, o.ClientID, o.Scopes)
}

// GoString hides the client secret from %#v as well.
func (o OAuth2Client) GoString() string { return o.String() }

// Equal says whether c and o hold the same credentials.
func (c Credentials) Equal(o Credentials) bool {
	if c.Username != o.Username || c.Password != o.Password || (c.OAuth2 == nil) != (o.OAuth2 == nil) {
		return false
	}
	if c.OAuth2 == nil {
		return true
	}
	a, b := c.OAuth2, o.OAuth2
	return a.TokenURL == b.TokenURL && a.ClientID == b.ClientID && a.ClientSecret == b.ClientSecret && slices.Equal(a.Scopes, b.Scopes) &&
		bytes.Equal(a.ClientCertificate, b.ClientCertificate) && sameKey(a.ClientKey, b.ClientKey) &&
		(a.ServiceAccount == nil) == (b.ServiceAccount == nil) && (a.ServiceAccount == nil || *a.ServiceAccount == *b.ServiceAccount)
}

// String never shows the password or client secret, so credentials cannot leak
// through a log line.
func (c Credentials) String() string {
	if c.OAuth2 != nil {
		return fmt.Sprintf("{Username:%s OAuth2:{TokenURL:%s ClientID:%s ClientSecret:<redacted>}}", c.Username, c.OAuth2.TokenURL, c.OAuth2.ClientID)
	}
	return fmt.Sprintf("{Username:%s Password:<redacted>}", c.Username)
}

// GoString hides the password from %#v as well.
func (c Credentials) GoString() string { return c.String() }

// Load reads DIR/relay.yaml from configDir and the secret files it references from
// secretsDir, both laid out as the kubelet mounts a ConfigMap and a Secret. It applies
// defaults and validates everything, secret contents included: a config that names a
// missing or malformed secret file is invalid.
func Load(configDir, secretsDir string) (*Loaded, error) {
	raw, err := os.ReadFile(filepath.Join(configDir, FileName))
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return LoadBytes(raw, os.DirFS(secretsDir))
}

// LoadBytes is Load with the relay.yaml content given and secrets read from fsys.
func LoadBytes(raw []byte, secrets fs.FS) (*Loaded, error) {
	c, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := &secretReader{fsys: secrets, files: map[string][]byte{}}
	l := &Loaded{
		Config:              c,
		PasswordHashes:      map[string][][]byte{},
		DKIMKeys:            map[string]crypto.Signer{},
		UpstreamCAs:         map[string]*x509.CertPool{},
		UpstreamCredentials: map[string]Credentials{},
	}
	if c.TLS != nil {
		certPEM := r.read("tls.certFile", c.TLS.CertFile)
		keyPEM := r.read("tls.keyFile", c.TLS.KeyFile)
		if certPEM != nil && keyPEM != nil {
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				r.fail("tls", "%s and %s are not a matching PEM certificate and key: %v", c.TLS.CertFile, c.TLS.KeyFile, err)
			} else {
				l.Certificate = &cert
			}
		}
	}
	for i, u := range c.Users {
		for _, h := range []struct{ field, file string }{
			{"passwordHashFile", u.PasswordHashFile}, {"previousPasswordHashFile", u.PreviousPasswordHashFile},
		} {
			if h.file == "" {
				continue
			}
			f := fmt.Sprintf("users[%d].%s", i, h.field)
			b := bytes.TrimSpace(r.read(f, h.file))
			if b == nil {
				continue
			}
			if _, err := bcrypt.Cost(b); err != nil {
				r.fail(f, "%s does not hold a bcrypt hash: %v", h.file, err)
				continue
			}
			l.PasswordHashes[u.Username] = append(l.PasswordHashes[u.Username], b)
		}
	}
	for i, d := range c.Domains {
		if d.DKIM == nil {
			continue
		}
		f := fmt.Sprintf("domains[%d].dkim.privateKeyFile", i)
		pemBytes := r.read(f, d.DKIM.PrivateKeyFile)
		if pemBytes == nil {
			continue
		}
		key, err := ParsePrivateKey(pemBytes)
		if err != nil {
			r.fail(f, "%s: %v", d.DKIM.PrivateKeyFile, err)
			continue
		}
		l.DKIMKeys[d.Domain] = key
	}
	for i, u := range c.Upstreams {
		f := fmt.Sprintf("upstreams[%d]", i)
		if u.TLS.CAFile != "" {
			if b := r.read(f+".tls.caFile", u.TLS.CAFile); b != nil {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(b) {
					r.fail(f+".tls.caFile", "%s holds no PEM certificate", u.TLS.CAFile)
				}
				l.UpstreamCAs[u.Name] = pool
			}
		}
		if a := u.Auth; a != nil {
			// required reads a file that must not be empty.
			required := func(field, file string) string {
				v := trimNewline(r.read(field, file))
				if v == "" && r.files[file] != nil {
					r.fail(field, "%s is empty", file)
				}
				return v
			}
			c := Credentials{Username: required(f+".auth.usernameFile", a.UsernameFile)}
			if o := a.OAuth2; o != nil {
				c.OAuth2 = &OAuth2Client{TokenURL: o.TokenURL, Scopes: slices.Clone(o.Scopes)}
				switch {
				case o.ServiceAccountFile != "":
					if b := r.read(f+".auth.oauth2.serviceAccountFile", o.ServiceAccountFile); b != nil {
						sa, err := ParseServiceAccount(b)
						if err == nil && o.TokenURL == "" {
							err = checkTokenURL(sa.TokenURI)
						}
						if err != nil {
							r.fail(f+".auth.oauth2.serviceAccountFile", "%v", err)
						}
						c.OAuth2.ServiceAccount = sa
					}
				default:
					c.OAuth2.ClientID = required(f+".auth.oauth2.clientIDFile", o.ClientIDFile)
				}
				switch {
				case o.ServiceAccountFile != "":
				case o.ClientCertificateFile != "":
					certPEM := r.read(f+".auth.oauth2.clientCertificateFile", o.ClientCertificateFile)
					keyPEM := r.read(f+".auth.oauth2.clientKeyFile", o.ClientKeyFile)
					if certPEM != nil && keyPEM != nil {
						if err := clientAssertionKey(c.OAuth2, certPEM, keyPEM); err != nil {
							r.fail(f+".auth.oauth2.clientKeyFile", "%v", err)
						}
					}
				default:
					c.OAuth2.ClientSecret = required(f+".auth.oauth2.clientSecretFile", o.ClientSecretFile)
				}
			} else {
				c.Password = required(f+".auth.passwordFile", a.PasswordFile)
			}
			l.UpstreamCredentials[u.Name] = c
		}
	}
	if err := errors.Join(r.errs...); err != nil {
		return nil, err
	}
	l.Hash = Hash(raw, r.files)
	return l, nil
}

// Hash identifies a configuration: the SHA-256, in hex, of relay.yaml and of every
// secret file it references (name and content, in name order). The operator computes
// it from what it renders and the relay from what it loaded, so the two agree exactly
// when the relay runs what the operator rendered.
func Hash(configYAML []byte, secrets map[string][]byte) string {
	h := sha256.New()
	write := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	write(configYAML)
	names := make([]string, 0, len(secrets))
	for n := range secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		write([]byte(n))
		write(secrets[n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ReferencedSecretFiles lists the secret file paths a configuration refers to.
func (c *Config) ReferencedSecretFiles() []string {
	var files []string
	if c.TLS != nil {
		files = append(files, c.TLS.CertFile, c.TLS.KeyFile)
	}
	for _, u := range c.Users {
		files = append(files, u.PasswordHashFile)
		if u.PreviousPasswordHashFile != "" {
			files = append(files, u.PreviousPasswordHashFile)
		}
	}
	for _, d := range c.Domains {
		if d.DKIM != nil {
			files = append(files, d.DKIM.PrivateKeyFile)
		}
	}
	for _, u := range c.Upstreams {
		if u.TLS.CAFile != "" {
			files = append(files, u.TLS.CAFile)
		}
		if u.Auth != nil {
			files = append(files, u.Auth.UsernameFile)
			if o := u.Auth.OAuth2; o != nil {
				for _, p := range []string{o.ClientIDFile, o.ClientSecretFile, o.ClientCertificateFile, o.ClientKeyFile, o.ServiceAccountFile} {
					if p != "" {
						files = append(files, p)
					}
				}
			} else {
				files = append(files, u.Auth.PasswordFile)
			}
		}
	}
	return files
}

// ParsePrivateKey reads a PEM RSA (PKCS#1 or PKCS#8, at least 1024 bits) or Ed25519
// (PKCS#8) private key, as used for DKIM.
func ParsePrivateKey(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not an RSA or PKCS#8 private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("RSA key of %d bits is too short: use at least 1024 (2048 recommended)", k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("key type %T is not supported: use RSA or Ed25519", key)
	}
}

// secretReader reads each referenced file once and collects errors that name the field.
type secretReader struct {
	fsys  fs.FS
	files map[string][]byte
	errs  []error
}

func (r *secretReader) read(field, name string) []byte {
	if b, ok := r.files[name]; ok {
		return b
	}
	b, err := fs.ReadFile(r.fsys, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			r.fail(field, "secret file %q does not exist in the secrets directory", name)
		} else {
			r.fail(field, "reading secret file %q: %v", name, err)
		}
		return nil
	}
	r.files[name] = b
	return b
}

func (r *secretReader) fail(field, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

func trimNewline(b []byte) string {
	return string(bytes.TrimRight(b, "\r\n"))
}

// clientAssertionKey sets an OAuth 2.0 client's certificate and key.
func clientAssertionKey(c *OAuth2Client, certPEM, keyPEM []byte) error {
	der, key, err := ParseClientCertificate(certPEM, keyPEM)
	if err != nil {
		return err
	}
	c.ClientCertificate, c.ClientKey = der, key
	return nil
}

// ParseClientCertificate checks an OAuth 2.0 client certificate and its key: a PEM
// certificate whose public key is the RSA private key's (client assertions are
// RS256). It returns the certificate's DER and the key.
func ParseClientCertificate(certPEM, keyPEM []byte) ([]byte, *rsa.PrivateKey, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, errors.New("the client certificate is not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("the client certificate: %w", err)
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("the client key: %w", err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the client key must be RSA: client assertions are signed RS256")
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&rk.PublicKey) {
		return nil, nil, errors.New("the client key is not the certificate's")
	}
	return block.Bytes, rk, nil
}

// sameKey says whether two parsed keys are the same (both nil, or equal).
func sameKey(a, b crypto.Signer) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	type equaler interface{ Equal(crypto.PrivateKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
