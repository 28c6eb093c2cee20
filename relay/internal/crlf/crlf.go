// Package crlf checks that text uses CR and LF only together, as CRLF, and has no NUL
// (RFC 5321 section 2.3.8), fast enough to run over every byte of every message.
package crlf

import "bytes"

// Check reports whether p is valid text that follows a chunk ending in CR when prevCR
// is set, and whether p itself ends in a CR that the next chunk must follow with LF.
// It runs on the vectorised searches of package bytes rather than byte by byte.
func Check(p []byte, prevCR bool) (ok, endsCR bool) {
	if len(p) == 0 {
		return true, prevCR
	}
	if prevCR && p[0] != '\n' {
		return false, false
	}
	if bytes.IndexByte(p, 0) >= 0 {
		return false, false
	}
	// Every LF must follow a CR; each LF then accounts for the CR just before it, so
	// any other CR is bare unless it is the last byte, awaiting its LF.
	paired := 0
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		switch {
		case j > 0 && p[j-1] == '\r':
			paired++
		case j == 0 && prevCR:
			// Its CR was the last byte of the previous chunk.
		default:
			return false, false
		}
		i = j + 1
	}
	endsCR = p[len(p)-1] == '\r'
	crs := bytes.Count(p, []byte{'\r'})
	if endsCR {
		crs--
	}
	return crs == paired, endsCR
}
