// Command pause is the sandbox ("pause") container of hack/cluster's one-node
// cluster: it holds a pod's namespaces open as PID 1, reaps the children that
// are reparented to it, and exits 0 on SIGTERM or SIGINT. No image can be
// pulled on the machines the cluster runs on, so hack/cluster builds this
// statically and packs it as an image (hack/cluster/images).
//
//	pause      # wait for a signal
//	pause -v   # print the version and exit
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "kuberelay-pause 1"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", sig)
			os.Exit(0)
		}
	}
}

// reap waits for every child that has exited, without blocking.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
