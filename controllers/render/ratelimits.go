package render

import (
	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// share is one pod's part of a fleet budget of n: rounded down so the pods together
// never pass it, but at least 1, so a small budget still lets mail through.
func share(n int64, pods int32) int64 {
	if n <= 0 {
		return 0
	}
	return max(1, n/int64(max(pods, 1)))
}

// podRateLimits is one pod's share of fleet budgets; nil when none is set.
func podRateLimits(l *relayv1alpha1.RateLimits, sessions int32, pods int32) *config.RateLimits {
	if l == nil && sessions == 0 {
		return nil
	}
	out := &config.RateLimits{MaxSessions: int(share(int64(sessions), pods))}
	if l != nil {
		out.MessagesPerMinute, out.MessagesPerHour, out.MessagesPerDay = share(l.MessagesPerMinute, pods), share(l.MessagesPerHour, pods), share(l.MessagesPerDay, pods)
		out.RecipientsPerMinute, out.RecipientsPerHour, out.RecipientsPerDay = share(l.RecipientsPerMinute, pods), share(l.RecipientsPerHour, pods), share(l.RecipientsPerDay, pods)
	}
	if *out == (config.RateLimits{}) {
		return nil
	}
	return out
}

// clientRateLimits is one pod's share of a RelayClient's budgets.
func clientRateLimits(l *relayv1alpha1.ClientRateLimits, pods int32) *config.RateLimits {
	if l == nil {
		return nil
	}
	return podRateLimits(&l.RateLimits, l.MaxSessions, pods)
}
