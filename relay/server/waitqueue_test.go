package server

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/relay/queue"
)

// The head is always the message due soonest, through puts, retries and removals.
func TestWaitQueueOrder(t *testing.T) {
	q := waitQueue{byID: map[string]*waitItem{}}
	t0 := time.Now()
	due := map[string]time.Time{}
	for i := range 200 {
		id := fmt.Sprintf("m%03d", i)
		due[id] = t0.Add(time.Duration(rand.IntN(1000)) * time.Second)
		q.put(queue.Envelope{ID: id, NextAttempt: due[id]})
	}
	// A retry makes one due now; a removal takes one out; a second put moves one.
	for _, w := range []string{"m010", "m150"} {
		due[w] = t0.Add(-time.Second)
		q.byID[w].env.NextAttempt = due[w]
		q.fix(q.byID[w])
	}
	if !q.remove("m077") || q.remove("m077") {
		t.Fatal("remove reports wrongly whether the message was waiting")
	}
	delete(due, "m077")
	due["m003"] = t0.Add(2000 * time.Second)
	q.put(queue.Envelope{ID: "m003", NextAttempt: due["m003"]})
	var last time.Time
	for n := 0; ; n++ {
		env, ok := q.head()
		if !ok {
			if n != len(due) {
				t.Fatalf("%d messages came out, want %d", n, len(due))
			}
			return
		}
		if env.NextAttempt.Before(last) || !env.NextAttempt.Equal(due[env.ID]) {
			t.Fatalf("%s due %v came out after one due %v (want due %v)", env.ID, env.NextAttempt, last, due[env.ID])
		}
		if n == 0 && env.ID != "m010" && env.ID != "m150" {
			t.Fatalf("first out %s, want a retried message", env.ID)
		}
		last = env.NextAttempt
		q.remove(env.ID)
	}
}
