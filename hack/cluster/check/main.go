// Command check is the workload hack/cluster starts to check its one-node
// cluster: a pod that runs to completion, and an HTTP server behind a Service
// reached by its ClusterIP from the host.
//
//	check -version             # print the version and exit 0
//	check -listen :8080        # serve "ok <hostname>\n" on every path until SIGTERM
//	check -get URL -timeout 20s  # GET URL until it answers 200 (retrying refused connections), print the body
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const version = "kuberelay-cluster-check 1"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	listen := flag.String("listen", "", "serve HTTP on this address")
	get := flag.String("get", "", "GET this URL until it answers 200")
	timeout := flag.Duration("timeout", 20*time.Second, "how long -get retries")
	flag.Parse()
	switch {
	case *showVersion:
		fmt.Println(version)
	case *listen != "":
		if err := serve(*listen); err != nil {
			fmt.Fprintln(os.Stderr, "check:", err)
			os.Exit(1)
		}
	case *get != "":
		if err := fetch(*get, *timeout); err != nil {
			fmt.Fprintln(os.Stderr, "check:", err)
			os.Exit(1)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func serve(addr string) error {
	host, _ := os.Hostname()
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Fprintln(os.Stderr, "check: serving on", addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

// fetch retries: the first connection to a brand-new Service can be refused
// until kube-proxy has written its rules.
func fetch(url string, timeout time.Duration) error {
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				fmt.Printf("%s", body)
				return nil
			}
			err = fmt.Errorf("status %s, read error %v", resp.Status, rerr)
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("GET %s: no answer within %s: %v", url, timeout, last)
}
