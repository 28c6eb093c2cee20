package eventually

import (
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	n := 0
	if why := Within(time.Minute, func() string {
		if n++; n < 3 {
			return "only " + string(rune('0'+n))
		}
		return ""
	}); why != "" || n != 3 {
		t.Fatalf("met after %d polls with %q, want 3 and \"\"", n, why)
	}
	if why := Within(50*time.Millisecond, func() string { return "never" }); why != "never" {
		t.Fatalf("an unmet condition gave %q, want its own reason", why)
	}
	if Holds(50*time.Millisecond, func() bool { return false }) || !Holds(time.Second, func() bool { return true }) {
		t.Fatal("Holds is wrong")
	}
}
