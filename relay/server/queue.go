package server

import (
	"container/heap"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kuberelay/kuberelay/relay/address"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/queue"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// errQueueFull answers a message the queue has no room for (RFC 3463 X.3.1: mail
// system full); the client keeps it and tries again.
var errQueueFull = &smtpError{Code: 452, EnhancedCode: enhancedCode{4, 3, 1}, Message: "Queue full, try again later"}

// errQueueWrite answers a message that could not be stored: never 250 for it.
var errQueueWrite = &smtpError{Code: 451, EnhancedCode: enhancedCode{4, 3, 0}, Message: "Could not store the message, try again later"}

// relayQueue is Queue mode's store and deliverer.
type relayQueue struct {
	store     *queue.Store
	deliverer *deliverer
}

// room refuses a new message while the queue is at its configured bounds.
func (q *relayQueue) room(g *generation) *smtpError {
	qc := g.loaded.Config.Delivery.Queue
	n, b := q.store.Size()
	if n >= qc.MaxMessages || b >= qc.MaxBytes {
		return errQueueFull
	}
	return nil
}

// deliverer sends the queued messages to their upstreams, each as soon as it is due,
// and keeps each recipient's result in the store.
type deliverer struct {
	srv   *Server
	store *queue.Store

	mu sync.Mutex
	// waiting are due at their NextAttempt, soonest first: a new message or a retry
	// looks at the head only, however many wait for a later attempt.
	waiting  waitQueue
	inFlight map[string]queue.Envelope // being delivered now
	wake     chan struct{}

	stop context.CancelFunc
	done sync.WaitGroup
}

func newDeliverer(srv *Server, store *queue.Store, envs []queue.Envelope) *deliverer {
	d := &deliverer{srv: srv, store: store, waiting: waitQueue{byID: map[string]*waitItem{}}, inFlight: map[string]queue.Envelope{},
		wake: make(chan struct{}, 1)}
	for _, e := range envs {
		d.waiting.put(e)
	}
	return d
}

// start runs deliveries until shutdown.
func (d *deliverer) start() {
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	d.done.Add(1)
	go d.run(ctx)
}

// shutdown stops taking messages and waits for the deliveries in flight; what was
// not delivered stays in the store for the next start.
func (d *deliverer) shutdown() {
	if d.stop != nil {
		d.stop()
	}
	d.done.Wait()
}

// add schedules a newly stored message for delivery now.
func (d *deliverer) add(env queue.Envelope) {
	d.mu.Lock()
	d.waiting.put(env)
	d.mu.Unlock()
	d.poke()
}

func (d *deliverer) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *deliverer) run(ctx context.Context) {
	defer d.done.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := d.dispatch(ctx)
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-timer.C:
		}
	}
}

// dispatch starts every due message the concurrency allows and returns when the next
// waiting one is due (zero if none waits).
func (d *deliverer) dispatch(ctx context.Context) time.Time {
	limit := d.srv.current().loaded.Config.Delivery.Queue.Concurrency
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		env, ok := d.waiting.head()
		if !ok {
			return time.Time{}
		}
		if env.NextAttempt.After(now) {
			return env.NextAttempt
		}
		if len(d.inFlight) >= limit {
			// Full: the next finished delivery pokes the loop.
			return time.Time{}
		}
		d.waiting.remove(env.ID)
		id := env.ID
		d.inFlight[id] = env
		d.done.Add(1)
		go func() {
			defer d.done.Done()
			d.deliver(ctx, env)
			d.mu.Lock()
			delete(d.inFlight, id)
			d.mu.Unlock()
			d.poke()
		}()
	}
}

// deliver makes one attempt at a message's pending recipients and records the
// results: delivered and refused recipients are done, the others wait for the next
// attempt, or fail once the message is older than maxAge.
func (d *deliverer) deliver(ctx context.Context, env queue.Envelope) {
	// The recipients are changed below; the copy listed as in flight keeps its own.
	env.Recipients = slices.Clone(env.Recipients)
	g := d.srv.current()
	qc := g.loaded.Config.Delivery.Queue
	log := d.srv.log.WithValues("queue", env.ID, "upstream", env.Route)
	results := d.attempt(ctx, g, env)
	if ctx.Err() != nil {
		// Shutting down: nothing recorded for this attempt; the next start tries again.
		return
	}
	m := d.srv.metrics.QueueDeliveries
	expired := time.Since(env.Received) >= qc.MaxAge.Duration
	pending := 0
	for i := range env.Recipients {
		r := &env.Recipients[i]
		res, tried := results[i]
		if r.State != queue.Pending || !tried {
			continue
		}
		r.Attempts++
		r.LastReply = clip(res.reply, maxReplyKept)
		switch {
		case res.state == queue.Delivered:
			r.State = queue.Delivered
			m.WithLabelValues("delivered", "", env.Route).Inc()
		case res.state == queue.Failed:
			r.State = queue.Failed
			m.WithLabelValues("failed", res.reason, env.Route).Inc()
		case expired:
			r.State = queue.Failed
			r.LastReply = "Gave up after " + qc.MaxAge.Duration.String() + ": " + r.LastReply
			m.WithLabelValues("expired", res.reason, env.Route).Inc()
		default:
			pending++
			m.WithLabelValues("deferred", res.reason, env.Route).Inc()
		}
	}
	if pending == 0 {
		failed := 0
		for _, r := range env.Recipients {
			if r.State == queue.Failed {
				failed++
				log.Info("recipient failed", "recipient", r.Address, "reply", r.LastReply)
			}
		}
		// The sender learns of the failures, unless it is the null sender (a
		// notification itself): RFC 5321 section 4.5.5.
		if failed > 0 && env.From != "" {
			if err := d.bounce(g, env); err != nil {
				log.Error(err, "queuing the delivery status notification for the sender")
			}
		}
		if err := d.store.Remove(env.ID); err != nil {
			log.Error(err, "removing a delivered message")
		}
		log.Info("queued message done", "recipients", len(env.Recipients))
		return
	}
	attempts := 0
	for _, r := range env.Recipients {
		attempts = max(attempts, r.Attempts)
	}
	env.NextAttempt = time.Now().Add(retryAfter(qc.Retry, attempts))
	if err := d.store.Update(context.Background(), env); err != nil {
		// The old state stays on disk: the attempt may be repeated, which duplicates
		// only what the upstream accepted in it.
		log.Error(err, "recording a delivery attempt")
	}
	log.Info("queued message deferred", "pending", pending, "nextAttempt", env.NextAttempt.UTC().Format(time.RFC3339))
	d.mu.Lock()
	d.waiting.put(env)
	d.mu.Unlock()
}

// bounce queues the delivery status notification for env's failed recipients, to its
// sender through the same route.
func (d *deliverer) bounce(g *generation, env queue.Envelope) error {
	r, err := d.store.Data(env)
	if err != nil {
		return err
	}
	headers, err := headerSection(r)
	r.Close()
	if err != nil {
		return err
	}
	now := time.Now()
	w, err := d.store.Create(queue.Envelope{Route: env.Route, Received: now, NextAttempt: now,
		Recipients: []queue.Recipient{{Address: env.From, State: queue.Pending}}})
	if err != nil {
		return err
	}
	if _, err := w.Write(dsn(g.hostname, env, headers, now)); err != nil {
		w.Abort()
		return err
	}
	n, err := w.Commit(context.Background())
	if err != nil {
		return err
	}
	d.srv.log.Info("delivery status notification queued", "queue", n.ID, "for", env.ID, "to", env.From)
	d.add(n)
	return nil
}

// retryAfter is the wait after attempt n (1 for the first): first, then growing by
// backoff, at most maxInterval, less up to 10% at random.
func retryAfter(r config.RetryConfig, n int) time.Duration {
	w := float64(r.First.Duration)
	for i := 1; i < n && w < float64(r.MaxInterval.Duration); i++ {
		w *= r.Backoff
	}
	w = min(w, float64(r.MaxInterval.Duration))
	return time.Duration(w * (1 - 0.1*rand.Float64()))
}

// result is what one attempt did for one recipient.
type result struct {
	state queue.RecipientState // Delivered, Failed, or Pending to try again
	reply string
	// reason says why it was not delivered, for the metrics: 4xx or 5xx (the
	// upstream's reply), connection (no reply: connect, TLS, AUTH, a timeout),
	// no-upstream (the route is not configured any more), local (reading the queued
	// copy), damaged (the queued copy does not match what was stored).
	reason string
}

// attempt sends the message to its upstream for its pending recipients.
func (d *deliverer) attempt(ctx context.Context, g *generation, env queue.Envelope) map[int]result {
	out := map[int]result{}
	// settle gives every pending recipient without a result yet res.
	settle := func(res result) map[int]result {
		for i, r := range env.Recipients {
			if _, ok := out[i]; !ok && r.State == queue.Pending {
				out[i] = res
			}
		}
		return out
	}
	pool := g.pools[env.Route]
	if pool == nil {
		return settle(result{state: queue.Pending, reply: "upstream " + env.Route + " is not configured", reason: "no-upstream"})
	}
	tx := pool.Begin(ctx, env.From, &upstream.MailOptions{Body: env.Body})
	defer tx.Close()
	var accepted []int
	for i, r := range env.Recipients {
		if r.State != queue.Pending {
			continue
		}
		err := tx.Rcpt(ctx, r.Address, nil)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		if ferr := tx.Failed(); ferr != nil {
			// The whole transaction failed (no endpoint, or the sender refused): its
			// verdict is every recipient's.
			return settle(verdict(ferr))
		}
		out[i] = verdict(err)
	}
	if len(accepted) == 0 {
		return out
	}
	data, err := d.message(g, env)
	if errors.Is(err, queue.ErrCorrupt) {
		// Found while signing: never delivered as it is, so never delivered.
		return settle(result{state: queue.Failed, reply: "the queued copy of the message is damaged", reason: "damaged"})
	}
	if err != nil {
		d.srv.log.Error(err, "reading a queued message", "queue", env.ID)
		return settle(result{state: queue.Pending, reply: "local error reading the message", reason: "local"})
	}
	defer data.Close()
	reply, err := tx.Data(ctx, data)
	res := result{state: queue.Delivered, reply: "250 " + reply}
	switch {
	case errors.Is(err, queue.ErrCorrupt):
		// Never delivered as it is, so never delivered.
		res = result{state: queue.Failed, reply: "the queued copy of the message is damaged", reason: "damaged"}
	case err != nil:
		res = verdict(err)
	}
	for _, i := range accepted {
		out[i] = res
	}
	return out
}

// verdict is a recipient's result from an upstream error: a 5xx fails it, anything
// else (4xx, connection trouble) leaves it for the next attempt.
func verdict(err error) result {
	var ue *upstream.Error
	switch {
	case errors.As(err, &ue) && ue.Code >= 500:
		return result{state: queue.Failed, reply: replyText(err), reason: "5xx"}
	case ue != nil && ue.Code >= 400:
		return result{state: queue.Pending, reply: replyText(err), reason: "4xx"}
	}
	return result{state: queue.Pending, reply: replyText(err), reason: "connection"}
}

// maxReplyKept bounds the upstream reply kept per recipient: a reply line is at most
// 512 octets (RFC 5321 section 4.5.3.1.5), and a multiline reply need not be kept whole.
const maxReplyKept = 1024

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

func replyText(err error) string {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Error()
	}
	return err.Error()
}

// message returns the stored data, DKIM-signed now if its domain has a key.
func (d *deliverer) message(g *generation, env queue.Envelope) (io.ReadCloser, error) {
	var key interface {
		Sign(io.Reader) (string, error)
	}
	if env.From != "" {
		if mb, err := address.Parse(env.From); err == nil {
			if k := g.dkim[mb.Domain]; k != nil {
				key = k
			}
		}
	}
	if key == nil {
		return d.store.Data(env)
	}
	r, err := d.store.Data(env)
	if err != nil {
		return nil, err
	}
	sig, err := key.Sign(r)
	r.Close()
	if err != nil {
		return nil, err
	}
	r, err = d.store.Data(env)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(strings.NewReader(sig), r), r}, nil
}

// Errors of the queue's HTTP operations.
var (
	errNotQueued = errors.New("no such message in the queue")
	errInFlight  = errors.New("the message is being delivered now; try again when the attempt is over")
)

// list returns every queued message, oldest first.
func (d *deliverer) list() []queue.Envelope {
	d.mu.Lock()
	out := make([]queue.Envelope, 0, len(d.waiting.byID)+len(d.inFlight))
	for _, w := range d.waiting.byID {
		out = append(out, w.env)
	}
	for _, e := range d.inFlight {
		out = append(out, e)
	}
	d.mu.Unlock()
	slices.SortFunc(out, func(a, b queue.Envelope) int { return a.Received.Compare(b.Received) })
	return out
}

// retryNow makes a waiting message (every one when id is "") due now, and returns how
// many it made due.
func (d *deliverer) retryNow(id string) int {
	d.mu.Lock()
	n := 0
	now := time.Now()
	for k, w := range d.waiting.byID {
		if id == "" || k == id {
			w.env.NextAttempt = now
			d.waiting.fix(w)
			n++
		}
	}
	d.mu.Unlock()
	d.poke()
	return n
}

// remove deletes a waiting message without delivering it or telling its sender.
func (d *deliverer) remove(id string) error {
	d.mu.Lock()
	waiting := d.waiting.remove(id)
	_, busy := d.inFlight[id]
	d.mu.Unlock()
	switch {
	case busy:
		return errInFlight
	case !waiting:
		return errNotQueued
	}
	return d.store.Remove(id)
}

// waitQueue is the messages waiting for an attempt: a heap by NextAttempt, and an
// index by ID for the HTTP operations.
type waitQueue struct {
	heap waitHeap
	byID map[string]*waitItem
}

type waitItem struct {
	env queue.Envelope
	i   int // position in the heap
}

func (q *waitQueue) put(env queue.Envelope) {
	if w := q.byID[env.ID]; w != nil {
		w.env = env
		q.fix(w)
		return
	}
	w := &waitItem{env: env}
	q.byID[env.ID] = w
	heap.Push(&q.heap, w)
}

func (q *waitQueue) head() (queue.Envelope, bool) {
	if len(q.heap) == 0 {
		return queue.Envelope{}, false
	}
	return q.heap[0].env, true
}

// remove drops id and reports whether it was waiting.
func (q *waitQueue) remove(id string) bool {
	w := q.byID[id]
	if w == nil {
		return false
	}
	delete(q.byID, id)
	heap.Remove(&q.heap, w.i)
	return true
}

func (q *waitQueue) fix(w *waitItem) { heap.Fix(&q.heap, w.i) }

type waitHeap []*waitItem

func (h waitHeap) Len() int { return len(h) }
func (h waitHeap) Less(i, j int) bool {
	if c := h[i].env.NextAttempt.Compare(h[j].env.NextAttempt); c != 0 {
		return c < 0
	}
	return h[i].env.ID < h[j].env.ID
}
func (h waitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *waitHeap) Push(x any) {
	w := x.(*waitItem)
	w.i = len(*h)
	*h = append(*h, w)
}
func (h *waitHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return w
}
