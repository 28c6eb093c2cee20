package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func (e *e2e) setup() error {
	if !*skipImage {
		t := time.Now()
		if out, err := e.cmd(5*time.Minute, "", "make", "image"); err != nil {
			return fmt.Errorf("make image: %v\n%s", err, out)
		}
		e.time("make image", time.Since(t))
	}
	tag, err := imageRef(filepath.Join(e.repo, "dist/kuberelay-image.tar"))
	if err != nil {
		return err
	}
	e.tag = tag[strings.LastIndex(tag, ":")+1:]
	e.image = tag
	e.logf("image %s", tag)

	t := time.Now()
	if *reuse {
		if err := e.locateCluster(); err != nil {
			return err
		}
		if err := e.importImages(); err != nil {
			return err
		}
		e.time("images imported into the running cluster", time.Since(t))
	} else {
		e.clusterStarted = true
		if out, err := e.cmd(5*time.Minute, "", "hack/cluster/cluster", "up"); err != nil {
			return fmt.Errorf("cluster up: %v\n%s", err, tail(out, 2000))
		}
		e.time("cluster up", time.Since(t))
		if err := e.locateCluster(); err != nil {
			return err
		}
	}

	t = time.Now()
	if out, err := e.cmd(3*time.Minute, "", *helmBin, "--kubeconfig", e.kubeconfig, "upgrade", "--install", releaseName,
		"charts/kuberelay", "-n", releaseNS, "--create-namespace",
		// --set-string: a tag of digits alone (a short commit hash can be one) is still a
		// string, as the chart's schema requires.
		"--set-string", "image.tag="+e.tag, "--set", "image.pullPolicy=Never"); err != nil {
		return fmt.Errorf("helm install: %v\n%s", err, out)
	}
	if out, err := e.kubectl(*readyWait+10*time.Second, "-n", releaseNS, "wait", "deployment", "--all",
		"--for=condition=Available", "--timeout="+readyWait.String()); err != nil {
		logs, _ := e.kubectl(20*time.Second, "-n", releaseNS, "get", "pods", "-o", "wide")
		return fmt.Errorf("manager Deployment not Available within %s: %v\n%s\n%s", *readyWait, err, out, logs)
	}
	e.time("helm install to manager Available", time.Since(t))

	capture, err := startCapture(nodeIP + ":0")
	if err != nil {
		return err
	}
	e.capture = capture
	e.logf("capture smarthost on %s", capture.Addr())
	return nil
}

func (e *e2e) locateCluster() error {
	out, err := e.cmd(30*time.Second, "", "hack/cluster/cluster", "kubeconfig")
	if err != nil {
		return fmt.Errorf("cluster kubeconfig: %v\n%s", err, out)
	}
	e.kubeconfig = strings.TrimSpace(out)
	e.state = filepath.Dir(e.kubeconfig)
	e.kubectlBin = "kubectl"
	if b, err := os.ReadFile(filepath.Join(e.state, "assets")); err == nil {
		if p := filepath.Join(strings.TrimSpace(string(b)), "kubectl"); fileExists(p) {
			e.kubectlBin = p
		}
	}
	if out, err := e.kubectl(20*time.Second, "get", "nodes"); err != nil {
		return fmt.Errorf("the cluster does not answer (is it up?): %v\n%s", err, out)
	}
	return nil
}

// importImages rebuilds the check image and imports it and the kuberelay image
// into a cluster that is already running (what `cluster up` does when it starts).
func (e *e2e) importImages() error {
	dir, err := os.MkdirTemp("", "kuberelay-e2e-images")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	steps := [][]string{
		{"go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "pause"), "./hack/cluster/pause"},
		{"go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "check"), "./hack/cluster/check"},
		{"go", "run", "-trimpath", "./hack/cluster/images", "-pause", filepath.Join(dir, "pause"), "-check", filepath.Join(dir, "check"),
			"-python", "/usr/bin/python3", "-o", filepath.Join(dir, "images.tar")},
	}
	sock := filepath.Join(e.state, "containerd/containerd.sock")
	for _, f := range []string{filepath.Join(dir, "images.tar"), filepath.Join(e.repo, "dist/kuberelay-image.tar")} {
		steps = append(steps, []string{"ctr", "-a", sock, "-n", "k8s.io", "images", "import", f})
	}
	for _, s := range steps {
		if out, err := e.cmdEnv(3*time.Minute, []string{"CGO_ENABLED=0"}, s[0], s[1:]...); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}
