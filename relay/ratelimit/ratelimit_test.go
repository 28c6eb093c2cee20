package ratelimit

import (
	"testing"
	"time"
)

// Each window refuses the unit that would pass its figure, counted, and starts again
// with the clock's next window; a refused Take counts nothing anywhere.
func TestTake(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	tb := NewTable()
	tb.Now = func() time.Time { return now }
	user, dom := Key{User, "shop.billing"}, Key{Domain, "shop.example"}
	var ul, dl Limits
	ul[Messages][Minute], ul[Messages][Hour] = 5, 12
	dl[Messages][Day] = 100
	take := func() *Refusal {
		return tb.Take(Messages, 1, Request{user, &ul}, Request{dom, &dl})
	}
	for i := range 5 {
		if r := take(); r != nil {
			t.Fatalf("message %d refused: %+v", i+1, r)
		}
	}
	if r := take(); r == nil || r.Key != user || r.Window != Minute || r.Limit != 5 {
		t.Fatalf("6th message in the minute: %+v, want the user's per-minute limit", r)
	}
	if got := tb.Used(dom, Messages); got[Day] != 5 {
		t.Fatalf("the refused message was counted for the domain: %v", got)
	}
	now = now.Add(time.Minute)
	for i := range 5 {
		if r := take(); r != nil {
			t.Fatalf("next minute, message %d refused: %+v", i+1, r)
		}
	}
	now = now.Add(time.Minute)
	for i := range 2 {
		if r := take(); r != nil {
			t.Fatalf("third minute, message %d refused: %+v", i+1, r)
		}
	}
	if r := take(); r == nil || r.Window != Hour || r.Limit != 12 {
		t.Fatalf("13th message in the hour: %+v, want the per-hour limit", r)
	}
	if got := tb.Used(user, Messages); got != [windows]int64{2, 12, 12} {
		t.Fatalf("used %v", got)
	}
	// Recipients are counted apart from messages; n at once is all or nothing.
	var rl Limits
	rl[Recipients][Minute] = 3
	if r := tb.Take(Recipients, 4, Request{Key{Upstream, "ses"}, &rl}); r == nil || r.Unit != Recipients {
		t.Fatalf("4 recipients against 3: %+v", r)
	}
	if r := tb.Take(Recipients, 3, Request{Key{Upstream, "ses"}, &rl}); r != nil {
		t.Fatalf("3 recipients against 3: %+v", r)
	}
}

// Concurrent sessions are bounded per key and freed when closed.
func TestSessions(t *testing.T) {
	tb := NewTable()
	k := Key{User, "a"}
	if !tb.OpenSession(k, 2) || !tb.OpenSession(k, 2) || tb.OpenSession(k, 2) {
		t.Fatal("the third of two sessions was let in, or one of the first two refused")
	}
	tb.CloseSession(k)
	if !tb.OpenSession(k, 2) {
		t.Fatal("a freed session slot was not reused")
	}
	if !tb.OpenSession(Key{User, "b"}, 0) {
		t.Fatal("no limit refused a session")
	}
}

func BenchmarkTake(b *testing.B) {
	tb := NewTable()
	var l Limits
	l[Messages][Minute] = 1 << 40
	reqs := []Request{{Key{User, "u"}, &l}, {Key{Domain, "d"}, &l}, {Key{Upstream, "up"}, &l}}
	b.ReportAllocs()
	for b.Loop() {
		tb.Take(Messages, 1, reqs...)
	}
}
