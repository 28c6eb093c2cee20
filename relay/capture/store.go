// Package capture is the relay's capture sink: mail routed to it is kept in memory,
// within a cap on messages and bytes (the oldest goes first), instead of being sent
// to a smarthost, and is read through a web UI and a JSON API (Handler).
//
// It is for staging and development: what it holds is lost when the process ends,
// and no captured message ever leaves the relay.
package capture

import (
	"bytes"
	"net/mail"
	"strings"
	"sync"
	"time"
)

// Defaults of the cap.
const (
	DefaultMaxMessages       = 1000
	DefaultMaxBytes    int64 = 32 << 20
)

// Message is one captured message.
type Message struct {
	ID       string    `json:"id"`
	Received time.Time `json:"received"`
	// From is the envelope sender (empty for the null sender), To the envelope
	// recipients, User the authenticated client (empty if none).
	From string   `json:"from"`
	To   []string `json:"to"`
	User string   `json:"user,omitempty"`
	// Subject is the decoded Subject header, for listings.
	Subject string `json:"subject"`
	// Size is the message's size as received; Truncated says Data holds only its
	// start, because the message alone was larger than the cap.
	Size      int64 `json:"size"`
	Truncated bool  `json:"truncated,omitempty"`

	data []byte
}

// Data is the message as it would have been relayed: trace header, signature and all.
func (m *Message) Data() []byte { return m.data }

// Store holds captured messages, oldest first. It is safe for concurrent use.
type Store struct {
	mu          sync.Mutex
	msgs        []*Message
	byID        map[string]*Message
	bytes       int64
	maxMessages int
	maxBytes    int64
	// onEvict counts messages dropped to make room.
	onEvict func()
}

// NewStore returns an empty store with the given cap (zero values take the defaults).
// onEvict, if not nil, is called for every message dropped to make room.
func NewStore(maxMessages int, maxBytes int64, onEvict func()) *Store {
	s := &Store{byID: map[string]*Message{}, onEvict: onEvict}
	s.SetLimits(maxMessages, maxBytes)
	return s
}

// SetLimits changes the cap (a configuration reload), dropping the oldest messages
// that no longer fit.
func (s *Store) SetLimits(maxMessages int, maxBytes int64) {
	if maxMessages <= 0 {
		maxMessages = DefaultMaxMessages
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxMessages, s.maxBytes = maxMessages, maxBytes
	s.evict(0)
}

// Add stores m with a copy of data, dropping the oldest messages
// until it fits. A message larger than the whole cap keeps its first maxBytes only.
func (s *Store) Add(m *Message, data []byte) {
	m.Size = int64(len(data))
	m.Subject = subject(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if int64(len(data)) > s.maxBytes {
		data = data[:s.maxBytes]
		m.Truncated = true
	}
	// A copy of exactly its length: what the cap counts is what is held.
	m.data = bytes.Clone(data)
	s.evict(int64(len(data)))
	s.msgs = append(s.msgs, m)
	s.byID[m.ID] = m
	s.bytes += int64(len(data))
}

// evict drops the oldest messages until one of room more bytes (and one more message
// if room > 0) fits. Called with s.mu held.
func (s *Store) evict(room int64) {
	extra := 0
	if room > 0 {
		extra = 1
	}
	n := 0
	for n < len(s.msgs) && (len(s.msgs)-n+extra > s.maxMessages || s.bytes+room > s.maxBytes) {
		m := s.msgs[n]
		delete(s.byID, m.ID)
		s.bytes -= int64(len(m.data))
		s.msgs[n] = nil
		n++
		if s.onEvict != nil {
			s.onEvict()
		}
	}
	s.msgs = s.msgs[n:]
}

// Stats is the store's size and cap.
type Stats struct {
	Messages    int   `json:"messages"`
	Bytes       int64 `json:"bytes"`
	MaxMessages int   `json:"maxMessages"`
	MaxBytes    int64 `json:"maxBytes"`
}

// Stats returns the store's size and cap.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Messages: len(s.msgs), Bytes: s.bytes, MaxMessages: s.maxMessages, MaxBytes: s.maxBytes}
}

// List returns the messages, newest first, that match q: a case-insensitive
// substring of the sender, a recipient or the subject ("" matches all).
func (s *Store) List(q string) []*Message {
	q = strings.ToLower(q)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Message, 0, len(s.msgs))
	for i := len(s.msgs) - 1; i >= 0; i-- {
		if m := s.msgs[i]; q == "" || m.matches(q) {
			out = append(out, m)
		}
	}
	return out
}

func (m *Message) matches(q string) bool {
	if strings.Contains(strings.ToLower(m.From), q) || strings.Contains(strings.ToLower(m.Subject), q) {
		return true
	}
	for _, t := range m.To {
		if strings.Contains(strings.ToLower(t), q) {
			return true
		}
	}
	return false
}

// Get returns the message with id, or nil.
func (s *Store) Get(id string) *Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// Delete drops the message with id and reports whether it was there.
func (s *Store) Delete(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.byID[id]
	if m == nil {
		return false
	}
	delete(s.byID, id)
	s.bytes -= int64(len(m.data))
	for i, x := range s.msgs {
		if x == m {
			s.msgs = append(s.msgs[:i], s.msgs[i+1:]...)
			break
		}
	}
	return true
}

// DeleteAll drops every message and returns how many there were.
func (s *Store) DeleteAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.msgs)
	s.msgs, s.byID, s.bytes = nil, map[string]*Message{}, 0
	return n
}

// subject is the decoded Subject header of data, or "" if it has none.
func subject(data []byte) string {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(data)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(append(data[:end:end], "\r\n\r\n"...)))
	if err != nil {
		return ""
	}
	return decodeHeader(msg.Header.Get("Subject"))
}
