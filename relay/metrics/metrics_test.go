package metrics

import (
	"slices"
	"testing"
)

// Names finds every metric, the queue's too.
func TestNames(t *testing.T) {
	names := Names()
	for _, want := range []string{"kuberelay_relay_messages_total", "kuberelay_relay_upstream_data_seconds", "kuberelay_queue_oldest_seconds", "kuberelay_queue_deliveries_total", "kuberelay_capture_messages"} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() lacks %s: %v", want, names)
		}
	}
	if len(names) != 23 {
		t.Errorf("%d names, want 23: %v", len(names), names)
	}
}
