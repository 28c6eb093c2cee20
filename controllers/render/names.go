package render

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// maxUpstreamName is the longest name relay/config accepts for an upstream (a DNS label).
const maxUpstreamName = 63

var (
	// upstreamNameRE is relay/config's rule for upstream names.
	upstreamNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// notNameChar matches what may not appear in an upstream name.
	notNameChar = regexp.MustCompile(`[^a-z0-9-]+`)
	// notKeyChar matches what may not appear in a Secret key.
	notKeyChar = regexp.MustCompile(`[^-._a-zA-Z0-9]+`)
)

// upstreamNames gives each Smarthost a relay.yaml upstream name. A Smarthost in the
// relay's namespace keeps its own name when that is a valid upstream name, so the
// config reads like the cluster; any other one is named <namespace>-<name>-<hash of
// namespace/name>, since the same name can exist in several namespaces and "a-b"/"c"
// and "a"/"b-c" would otherwise meet. Names depend only on the Smarthost and the
// relay's namespace, so they stay the same while other Smarthosts come and go.
func upstreamNames(relayNS string, keys []types.NamespacedName) map[types.NamespacedName]string {
	names := make(map[types.NamespacedName]string, len(keys))
	used := map[string]bool{}
	var hashed []types.NamespacedName
	for _, k := range keys {
		if k.Namespace == relayNS && upstreamNameRE.MatchString(k.Name) {
			names[k] = k.Name
			used[k.Name] = true
		} else {
			hashed = append(hashed, k)
		}
	}
	sort.Slice(hashed, func(i, j int) bool { return hashed[i].String() < hashed[j].String() })
	for _, k := range hashed {
		sum := shortHash(k.String())
		// A Smarthost in the relay's namespace could, in theory, be named exactly like a
		// hashed name: take more of the hash until the name is free.
		for n := 8; ; n += 8 {
			if n > len(sum) {
				n = len(sum)
			}
			base := strings.Trim(notNameChar.ReplaceAllString(strings.ToLower(k.Namespace+"-"+k.Name), "-"), "-")
			if max := maxUpstreamName - n - 1; len(base) > max {
				base = strings.TrimRight(base[:max], "-")
			}
			name := sum[:n]
			if base != "" {
				name = base + "-" + name
			}
			if !used[name] || n == len(sum) {
				names[k] = name
				used[name] = true
				break
			}
		}
	}
	return names
}

// secretFileName names a file of the operator-owned Secret: <prefix>.<id>.<suffix>.
// Prefixes differ per kind of file and ids are unique within a kind, so names never
// collide; they depend on nothing but the id, so they are stable. An id that is not
// made of Secret key characters, or would make the name longer than a Secret key may
// be, is shortened and made unique with a hash.
func secretFileName(prefix, id, suffix string) string {
	const maxKey = 253
	name := prefix + "." + id + "." + suffix
	clean := notKeyChar.ReplaceAllString(id, "-")
	if clean == id && len(name) <= maxKey {
		return name
	}
	sum := shortHash(id)[:16]
	if max := maxKey - len(prefix) - len(suffix) - len(sum) - 3; len(clean) > max {
		clean = clean[:max]
	}
	return prefix + "." + clean + "-" + sum + "." + suffix
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
