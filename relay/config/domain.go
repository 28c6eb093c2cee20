package config

import "strings"

// NormalizeDomain is the one spelling of a domain name the relay and the operator
// compare: lower case, without the trailing dot of a fully qualified name.
func NormalizeDomain(s string) string {
	return strings.ToLower(strings.TrimSuffix(s, "."))
}
