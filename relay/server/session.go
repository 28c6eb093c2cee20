package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/relay/address"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/metrics"
	"github.com/kuberelay/kuberelay/relay/policy"
	"github.com/kuberelay/kuberelay/relay/queue"
	"github.com/kuberelay/kuberelay/relay/ratelimit"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

var (
	errTooManyErrors = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 7, 0},
		Message: "Too many errors, closing connection"}
	errShuttingDown = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 3, 2},
		Message: "Service shutting down, try again later"}
	errTooManyConnections = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 3, 2},
		Message: "Too many connections, try again later"}
	errTooManyFromClient = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 7, 0},
		Message: "Too many connections from your address, try again later"}
	errAuthThrottled = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 7, 0},
		Message: "Too many failed authentications, try again later"}
	errUpstreamUnavailable = &smtpError{Code: 451, EnhancedCode: enhancedCode{4, 4, 1},
		Message: "Upstream temporarily unavailable, try again later"}
	errNestedMail = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1},
		Message: "Nested MAIL command: send RSET first"}
	errTooManyRecipients = &smtpError{Code: 452, EnhancedCode: enhancedCode{4, 5, 3},
		Message: "Too many recipients: send the rest in another transaction"}
	errLocal = &smtpError{Code: 451, EnhancedCode: enhancedCode{4, 3, 0},
		Message: "Local error, try again later"}
)

// backend is what a connection's session serves with: the server, the configuration
// generation the connection started on, and its listener.
type backend struct {
	srv      *Server
	gen      *generation
	listener config.Listener
}

// mailParams are the MAIL parameters the relay acts on.
type mailParams struct {
	// Body is BODY=7BIT or BODY=8BITMIME (RFC 6152) as the client gave it, or "".
	Body string
}

func newSession(b *backend, tc *trackedConn, isTLS bool) *session {
	id := newID()
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		b:      b,
		tc:     tc,
		id:     id,
		ip:     tc.ip,
		tls:    isTLS,
		ctx:    ctx,
		cancel: cancel,
		log:    b.srv.log.WithValues("session", id, "listener", b.listener.Name, "client", tc.ip.String()),
	}
	tc.setSession(s)
	return s
}

// restart forgets what the session learnt before STARTTLS (RFC 3207 section 4.2):
// the transaction, the EHLO name and any authentication.
func (s *session) restart() {
	s.endTx()
	s.tls = true
	s.helo = ""
	s.user = ""
}

func newID() string { return randomHex(6) }

// session is one client connection's SMTP conversation (from EHLO, or from the EHLO
// after STARTTLS, to the end).
type session struct {
	b      *backend
	tc     *trackedConn
	id     string
	ip     netip.Addr
	helo   string
	tls    bool
	ctx    context.Context
	cancel context.CancelFunc
	log    logr.Logger

	user string // authenticated user name, "" when not authenticated
	// userSession is set while the user's session counts against its maxSessions.
	userSession bool
	errors      int
	seq         int

	mu       sync.Mutex
	inTx     bool
	from     string
	domain   string
	route    string
	queueID  string
	tx       *upstream.Tx // nil in Queue mode and when captured
	captured bool         // the capture sink takes this transaction's message
	body     string       // the BODY parameter of MAIL
	rcpts    []string     // Queue mode and captured: the accepted recipients, in wire form
	rcptOK   int
	rcptSeen int
}

func (s *session) inTransaction() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inTx
}

// fail counts a rejected command and turns the rejection into a 421 and a closed
// connection once the session has had too many.
func (s *session) fail(err *smtpError) error {
	s.errors++
	if s.errors >= s.b.gen.loaded.Config.Limits.MaxErrors {
		s.log.Info("closing session after too many errors", "errors", s.errors)
		s.tc.closeAfterWrite.Store(true)
		return errTooManyErrors
	}
	return err
}

func (s *session) AuthMechanisms() []string {
	if !s.b.gen.policy.HasUsers() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	lim := s.b.gen.loaded.Config.Limits.Auth
	limiter := s.b.srv.authLimit
	if limiter.blockedClient(lim, s.ip) {
		return nil, s.authThrottled("client", "")
	}
	check := func(identity, username, password string) error {
		// Checked before the password, so a locked-out guess costs no bcrypt.
		if limiter.blockedUser(lim, s.ip, username) {
			return s.authThrottled("user", username)
		}
		if identity != "" && identity != username || !s.b.gen.policy.Authenticate(username, password) {
			return s.authFailed(lim, username)
		}
		if max := s.b.gen.sessions[username]; max > 0 {
			if !s.b.srv.rates.OpenSession(ratelimit.Key{Kind: ratelimit.User, Name: username}, max) {
				s.b.srv.metrics.RateLimited.WithLabelValues("user", "sessions", "").Inc()
				s.log.Info("session limit reached", "user", sanitizeToken(username, 64), "maxSessions", max)
				return errSessionRateLimited
			}
			s.userSession = true
		}
		limiter.succeeded(s.ip, username)
		s.user = username
		s.log.Info("authenticated", "user", sanitizeToken(username, 64))
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(check), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, errAuthMechanism
}

// authFailed counts a failed AUTH against the client's and the username's budgets
// and answers it after the delay those give, which grows with each failure of the
// client, so guessing over many connections gets slower and slower.
func (s *session) authFailed(lim config.AuthLimits, username string) error {
	s.b.srv.metrics.AuthFailures.WithLabelValues(s.b.listener.Name).Inc()
	delay := s.b.srv.authLimit.failed(lim, s.ip, username)
	// Only a sanitised user name is logged; the password never is.
	s.log.Info("authentication failed", "user", sanitizeToken(username, 64), "delay", delay.String())
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.ctx.Done():
	}
	return s.fail(errAuthFailed)
}

// authThrottled refuses AUTH from a client, or for a username, whose failure budget is
// spent, and closes the connection.
func (s *session) authThrottled(scope, username string) error {
	s.b.srv.metrics.AuthThrottled.WithLabelValues(s.b.listener.Name, scope).Inc()
	s.log.Info("authentication refused: too many failures", "scope", scope, "user", sanitizeToken(username, 64))
	s.tc.closeAfterWrite.Store(true)
	return errAuthThrottled
}

func (s *session) Mail(from string, opts mailParams) error {
	if s.b.srv.shuttingDown.Load() || s.b.srv.draining.Load() {
		s.tc.closeAfterWrite.Store(true)
		return errShuttingDown
	}
	g := s.b.gen
	if s.b.listener.RequireAuth && s.user == "" {
		return s.fail(policy.ErrAuthRequired)
	}
	if s.user == "" && !g.policy.NetworkAllowed(s.ip) {
		return s.fail(policy.ErrRelayDenied)
	}
	// The null reverse-path stays empty; any other is checked and re-quoted, so the
	// policy and the upstream see one address.
	var sender address.Mailbox
	if from != "" {
		mb, err := address.Parse(from)
		if err != nil {
			s.log.Info("sender refused", "user", sanitizeToken(s.user, 64), "reason", err.Error())
			s.b.srv.metrics.Messages.WithLabelValues(metrics.OutcomeRejected, "sender-syntax", "").Inc()
			return s.fail(pathError(err, enhancedCode{5, 1, 7}))
		}
		sender, from = mb, mb.Wire()
	}
	route, perr := g.policy.CheckSender(from, s.user)
	if perr != nil {
		s.log.Info("sender refused", "from", from, "user", sanitizeToken(s.user, 64), "reason", perr.Message)
		s.b.srv.metrics.Messages.WithLabelValues(metrics.OutcomeRejected, "sender", "").Inc()
		return s.fail(perr)
	}
	pool := g.pools[route]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inTx {
		// RFC 5321 section 4.1.4: MAIL may not start a transaction inside another.
		return s.fail(errNestedMail)
	}
	// Captured mail never reaches the queue or an upstream: their room is not needed.
	captured := g.capture.captures(s.user, sender.Domain)
	if q := s.b.srv.queue; q != nil && !captured {
		if e := q.room(g); e != nil {
			return e
		}
	}
	// Counted last, once nothing else refuses the transaction.
	if g.limits != nil {
		var buf [3]ratelimit.Request
		// Captured mail spends no upstream's budget: it never reaches one.
		limitRoute := route
		if captured {
			limitRoute = ""
		}
		if r := s.b.srv.rates.Take(ratelimit.Messages, 1, s.rateRequests(g, sender.Domain, limitRoute, &buf)...); r != nil {
			return s.rateLimited(r, errMessageRateLimited)
		}
	}
	s.seq++
	s.inTx = true
	s.from = from
	s.route = route
	// The null sender has no domain, so it is never signed with another sender's key.
	s.domain = sender.Domain
	s.queueID = s.id + "." + strconv.Itoa(s.seq)
	s.body = opts.Body
	s.captured = captured
	if s.b.srv.queue == nil && !captured {
		s.tx = pool.Begin(s.ctx, from, &upstream.MailOptions{Body: opts.Body})
	}
	s.rcptOK, s.rcptSeen = 0, 0
	s.rcpts = s.rcpts[:0]
	return nil
}

func (s *session) Rcpt(to string) error {
	s.mu.Lock()
	tx, inTx := s.tx, s.inTx
	s.mu.Unlock()
	if !inTx {
		return errMailFirst
	}
	if max := s.b.gen.loaded.Config.Limits.MaxRecipients; max > 0 && s.rcptOK >= max {
		// RFC 5321 section 4.5.3.1.10: the client sends the rest in another transaction.
		return errTooManyRecipients
	}
	s.rcptSeen++
	mb, perr := address.Parse(to)
	if perr != nil {
		s.b.srv.metrics.Recipients.WithLabelValues("rejected", s.route).Inc()
		s.log.Info("recipient refused", "queue", s.queueID, "reason", perr.Error())
		return s.fail(pathError(perr, enhancedCode{5, 1, 3}))
	}
	if g := s.b.gen; g.limits != nil {
		var buf [3]ratelimit.Request
		limitRoute := s.route
		if s.captured {
			limitRoute = ""
		}
		if r := s.b.srv.rates.Take(ratelimit.Recipients, 1, s.rateRequests(g, s.domain, limitRoute, &buf)...); r != nil {
			return s.rateLimited(r, errRecipientRateLimited)
		}
	}
	if tx == nil {
		// Queue mode or captured: the recipient is the queue's or the sink's.
		s.rcpts = append(s.rcpts, mb.Wire())
		s.rcptOK++
		s.b.srv.metrics.Recipients.WithLabelValues("accepted", s.route).Inc()
		return nil
	}
	err := tx.Rcpt(s.ctx, mb.Wire(), nil)
	if err == nil {
		s.rcptOK++
		s.b.srv.metrics.Recipients.WithLabelValues("accepted", s.route).Inc()
		return nil
	}
	reply := s.upstreamReply(err)
	outcome := "rejected"
	if reply.Code/100 == 4 {
		outcome = "deferred"
	}
	s.b.srv.metrics.Recipients.WithLabelValues(outcome, s.route).Inc()
	s.log.Info("recipient not accepted", "queue", s.queueID, "code", reply.Code, "upstream", s.route, "detail", err.Error())
	return s.fail(reply)
}

// dataReady says whether DATA may start: after MAIL and an accepted recipient (RFC
// 5321 section 3.3).
func (s *session) dataReady() *smtpError {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.inTx:
		return errMailFirst
	case s.rcptOK == 0:
		return errNoRecipients
	}
	if q := s.b.srv.queue; q != nil && !s.captured {
		return q.room(s.b.gen)
	}
	return nil
}

// Data relays the message r holds (the dot-decoded data, checked as it is read) and
// returns the verdict for the client.
func (s *session) Data(r io.Reader) error {
	s.mu.Lock()
	tx, captured := s.tx, s.captured
	s.mu.Unlock()
	g := s.b.gen
	m := s.b.srv.metrics
	dr := &dataReader{r: r}

	proto := "ESMTP"
	if s.tls {
		proto += "S"
	}
	if s.user != "" {
		proto += "A"
	}
	header := receivedHeader(s.helo, s.ip.String(), g.hostname, proto, s.queueID, time.Now())
	switch {
	case captured:
		return s.dataCaptured(dr, header)
	case tx == nil:
		return s.dataQueued(dr, header)
	}
	msg, done, err := s.signed(dr, header)
	if err != nil {
		return s.dataFailed(dr, err)
	}
	defer done()
	reply, err := tx.Data(s.ctx, msg)
	if err != nil {
		return s.dataFailed(dr, err)
	}
	latency := time.Since(dr.eofAt)
	m.UpstreamLatency.WithLabelValues(s.route).Observe(latency.Seconds())
	m.MessageBytes.Observe(float64(dr.n))
	m.Messages.WithLabelValues(metrics.OutcomeRelayed, "", s.route).Inc()
	s.log.Info("message relayed", "queue", s.queueID, "from", s.from, "recipients", s.rcptOK,
		"size", dr.n, "upstream", s.route, "endpoint", tx.Endpoint(), "upstreamReply", reply,
		"latency", latency.String())
	return nil
}

// signed is the message to pass on: the trace header, the DKIM signature if the
// sender's domain has a key, and the data. done releases what signing spooled.
func (s *session) signed(dr *dataReader, header string) (io.Reader, func(), error) {
	key := s.b.gen.dkim[s.domain]
	if key == nil {
		return io.MultiReader(strings.NewReader(header), dr), func() {}, nil
	}
	// A DKIM signature covers the whole body and must precede it, so the message is
	// spooled (memory, then an unlinked file) while it is hashed.
	sp := &spool{dir: s.b.srv.opts.SpoolDir, limit: s.b.srv.opts.SpoolMemory}
	sig, err := key.Sign(io.TeeReader(dr, sp))
	if err != nil {
		sp.Close()
		return nil, nil, err
	}
	body, err := sp.reader()
	if err != nil {
		sp.Close()
		return nil, nil, err
	}
	return io.MultiReader(strings.NewReader(header+sig), body), sp.Close, nil
}

// dataQueued stores the message in the queue and answers 250 only once it is durable.
// The DKIM signature is made when it is delivered, with the key of that day.
func (s *session) dataQueued(dr *dataReader, header string) error {
	q := s.b.srv.queue
	m := s.b.srv.metrics
	now := time.Now()
	env := queue.Envelope{From: s.from, Body: s.body, Route: s.route, Received: now, NextAttempt: now}
	for _, r := range s.rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Address: r, State: queue.Pending})
	}
	w, err := q.store.Create(env)
	if err == nil {
		if _, err = io.WriteString(w, header); err == nil {
			_, err = io.Copy(w, dr)
		}
		if err != nil {
			w.Abort()
		} else {
			env, err = w.Commit(s.ctx)
		}
	}
	if dr.err != nil {
		return s.dataFailed(dr, dr.err)
	}
	if err != nil {
		m.Messages.WithLabelValues(metrics.OutcomeDeferred, "queue-write", s.route).Inc()
		s.log.Error(err, "storing a message in the queue", "queue", s.queueID)
		return s.fail(errQueueWrite)
	}
	m.MessageBytes.Observe(float64(dr.n))
	m.Messages.WithLabelValues(metrics.OutcomeQueued, "", s.route).Inc()
	s.log.Info("message queued", "queue", s.queueID, "id", env.ID, "from", s.from, "recipients", len(env.Recipients),
		"size", env.Size, "upstream", s.route)
	s.queueID = env.ID
	q.deliverer.add(env)
	return nil
}

// dataFailed turns a failure during DATA into the reply for the client, counts it and
// logs it.
func (s *session) dataFailed(dr *dataReader, err error) error {
	m := s.b.srv.metrics
	var reply *smtpError
	reason := "upstream"
	switch {
	case dr.err != nil:
		// The client's data was at fault (or its connection); the upstream never got a
		// final dot.
		reply, _ = dr.err.(*smtpError)
		switch dr.err {
		case errAmbiguousLineEnding:
			reason = "line-ending"
		case errDataTimeout, errClientRead:
			reason = "client"
			s.tc.closeAfterWrite.Store(true)
		case errDataLineTooLong:
			reason = "line-length"
			s.tc.closeAfterWrite.Store(true)
		default:
			reason = "size"
		}
		if reply == nil {
			reply = errLocal
		}
	default:
		var ue *upstream.Error
		if errors.As(err, &ue) {
			reply = s.upstreamReply(err)
		} else {
			reason = "local"
			reply = errLocal
			s.log.Error(err, "relaying message", "queue", s.queueID)
		}
	}
	outcome := metrics.OutcomeRejected
	if reply.Code/100 == 4 {
		outcome = metrics.OutcomeDeferred
	}
	m.Messages.WithLabelValues(outcome, reason, s.route).Inc()
	s.log.Info("message not relayed", "queue", s.queueID, "from", s.from, "code", reply.Code,
		"reason", reason, "upstream", s.route, "detail", err.Error())
	if reply.Code == 421 || reply == errDataLineTooLong {
		return reply
	}
	return s.fail(reply)
}

// upstreamReply maps an upstream failure to the client's reply: upstream 4xx and 5xx
// pass through (sanitised), every local failure is a 4xx so the client retries.
func (s *session) upstreamReply(err error) *smtpError {
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return errLocal
	}
	if ue.Code == 0 {
		return errUpstreamUnavailable
	}
	code := ue.Code
	if code == 421 {
		// The upstream closing its connection is not a reason to close the client's.
		code = 451
	}
	enh := enhancedCode(ue.Enhanced)
	if enh == (enhancedCode{}) || enh[0] != code/100 {
		enh = enhancedCode{}
	}
	// The upstream package has already reduced the text to bounded printable ASCII.
	msg := "Upstream: " + ue.Message
	return &smtpError{Code: code, EnhancedCode: enh, Message: msg}
}

// pathError is the reply to a mailbox that address.Parse refused; enh is X.1.7 for
// the sender and X.1.3 for a recipient (RFC 3463).
func pathError(err error, enh enhancedCode) *smtpError {
	if errors.Is(err, address.ErrNonASCII) {
		// RFC 6531 section 3.5: an address that needs SMTPUTF8 without it.
		return &smtpError{Code: 553, EnhancedCode: enhancedCode{5, 6, 7}, Message: err.Error()}
	}
	return &smtpError{Code: 501, EnhancedCode: enh, Message: err.Error()}
}

// Reset ends the transaction, if any: after the reply to the final dot, for RSET and
// for a new EHLO.
func (s *session) Reset() {
	s.endTx()
}

// endTx drops the transaction, if any, and gives its upstream connection back.
func (s *session) endTx() {
	s.mu.Lock()
	tx := s.tx
	s.tx = nil
	s.inTx = false
	s.mu.Unlock()
	if tx != nil {
		tx.Close()
	}
}

// Logout ends the session with its connection.
func (s *session) Logout() {
	s.endTx()
	s.cancel()
	if s.userSession {
		s.b.srv.rates.CloseSession(ratelimit.Key{Kind: ratelimit.User, Name: s.user})
	}
}

// Rate limit replies: the client keeps the mail and tries again later.
var (
	errMessageRateLimited   = &smtpError{Code: 451, EnhancedCode: enhancedCode{4, 7, 1}, Message: "Message rate limit reached"}
	errRecipientRateLimited = &smtpError{Code: 452, EnhancedCode: enhancedCode{4, 5, 3}, Message: "Recipient rate limit reached"}
	// RFC 4954 section 6: a temporary failure of AUTH.
	errSessionRateLimited = &smtpError{Code: 454, EnhancedCode: enhancedCode{4, 7, 0}, Message: "Too many sessions for this user, try again later"}
)

// rateRequests are the limits a message or recipient counts against: the user's, the
// sender domain's and the upstream's.
// They are built in dst, so that the hot path allocates nothing for them.
func (s *session) rateRequests(g *generation, domain, route string, dst *[3]ratelimit.Request) []ratelimit.Request {
	keys := [3]ratelimit.Key{{Kind: ratelimit.User, Name: s.user}, {Kind: ratelimit.Domain, Name: config.NormalizeDomain(domain)},
		{Kind: ratelimit.Upstream, Name: route}}
	reqs := dst[:0]
	for _, k := range keys {
		if l := g.limits[k]; l != nil && k.Name != "" {
			reqs = append(reqs, ratelimit.Request{Key: k, Limits: l})
		}
	}
	return reqs
}

// rateLimited answers a refusal by a rate limit, saying which, counts and logs it.
func (s *session) rateLimited(r *ratelimit.Refusal, base *smtpError) error {
	s.b.srv.metrics.RateLimited.WithLabelValues(r.Key.Kind.String(), r.Unit.String(), r.Window.String()).Inc()
	s.log.Info("rate limit reached", "kind", r.Key.Kind.String(), "name", sanitizeToken(r.Key.Name, 255),
		"unit", r.Unit.String(), "window", r.Window.String(), "limit", r.Limit)
	reply := *base
	reply.Message = fmt.Sprintf("%s: at most %d %s per %s for %s %s, try again later", base.Message, r.Limit, r.Unit, r.Window, r.Key.Kind, sanitizeToken(r.Key.Name, 255))
	// Not an error of the client's: it does not count towards closing the session.
	return &reply
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): prompt for the user name, then the password.
type loginServer struct {
	check    func(identity, username, password string) error
	username string
	step     int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if response != nil {
			l.username = string(response)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check("", l.username, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN response")
}
