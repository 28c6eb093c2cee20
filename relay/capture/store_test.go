package capture

import (
	"fmt"
	"strings"
	"testing"
)

func add(s *Store, id string, size int) {
	s.Add(&Message{ID: id}, []byte("Subject: "+id+"\r\n\r\n"+strings.Repeat("x", size)))
}

// The cap holds in messages and in bytes, dropping the oldest first; one message
// over the whole cap keeps its start only.
func TestStoreCap(t *testing.T) {
	evicted := 0
	s := NewStore(3, 1000, func() { evicted++ })
	for i := range 5 {
		add(s, fmt.Sprint("m", i), 10)
	}
	if l := s.List(""); len(l) != 3 || l[0].ID != "m4" || l[2].ID != "m2" || evicted != 2 {
		t.Fatalf("by count: %d kept, newest %s, oldest %s, %d evicted", len(l), l[0].ID, l[2].ID, evicted)
	}
	add(s, "big", 980) // the other three must go to fit it in 1000
	st := s.Stats()
	if st.Bytes > 1000 || st.Messages != 1 || s.Get("m4") != nil || s.Get("m2") != nil || s.Get("m3") != nil || s.Get("big") == nil {
		t.Fatalf("by bytes: %+v", st)
	}
	add(s, "huge", 5000)
	if m := s.Get("huge"); m == nil || !m.Truncated || len(m.Data()) != 1000 || m.Size != int64(5000+len("Subject: huge\r\n\r\n")) || s.Stats().Messages != 1 {
		t.Fatalf("a message over the cap: %+v, stats %+v", m, s.Stats())
	}
	s.SetLimits(1, 100)
	if s.Stats().Messages != 0 || s.Stats().Bytes != 0 {
		t.Fatalf("after a smaller cap: %+v", s.Stats())
	}
	add(s, "a", 1)
	if !s.Delete("a") || s.Delete("a") || s.Stats().Bytes != 0 {
		t.Fatalf("delete: %+v", s.Stats())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("Subject: =?utf-8?b?w6k=?=\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n--x--\r\n"))
	f.Add([]byte("Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n--a--\r\n"))
	f.Add([]byte("no header\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewStore(10, 1<<20, nil)
		s.Add(&Message{ID: "f"}, data)
		d := Decode(s.Get("f"))
		if d == nil || d.Headers == nil {
			t.Fatal("no detail")
		}
	})
}
